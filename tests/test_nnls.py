"""Sparse NNLS against scipy, scikit-learn, the KKT conditions and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import Lasso

import conejax
from helpers import TOL, mnist_test, mnist_train, nnls_objective, random_problem, scipy_nnls

DTYPES = [np.float32, np.float64]
identity = lambda f: f


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transform", [identity, jax.jit], ids=["eager", "jit"])
def test_matches_scipy_on_random_problems(dtype, transform):
  W, V = random_problem(0, m=40, d=12, n=50, dtype=dtype)
  result = transform(lambda W, V: conejax.nnls(W, V))(W, V)
  assert result.h.dtype == dtype and result.h.shape == (50, 12)
  ours, exact = nnls_objective(W, V, result.h), nnls_objective(W, V, scipy_nnls(W, V))
  assert np.max((ours - exact) / exact) <= TOL[dtype]
  assert np.min(ours - exact) >= -TOL[dtype] * np.max(exact)  # scipy is exact: never beaten


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_scipy_on_mnist(dtype):
  X, _ = mnist_train(1000, dtype)
  W = np.asarray(conejax.nmf(X, 32, key=jax.random.key(0), method="mu", max_iter=30).W)
  V = mnist_test(100, dtype)
  result = conejax.nnls(W, V)
  ours, exact = nnls_objective(W, V, result.h), nnls_objective(W, V, scipy_nnls(W, V))
  assert np.max((ours - exact) / exact) <= TOL[dtype]
  assert np.all(result.converged)


@pytest.mark.parametrize("mu", [0.05, 0.5])
def test_sparse_matches_positive_lasso(mu):
  W, V = random_problem(1, m=30, d=10, n=8)
  result = conejax.nnls(W, V, mu)
  # Lasso: (1 / (2 m)) ||v - W h||^2 + alpha |h|_1, so alpha = mu / m.
  lasso = Lasso(alpha=mu / W.shape[0], positive=True, fit_intercept=False, tol=1e-12,
                max_iter=100_000)
  reference = np.stack([lasso.fit(W, v).coef_ for v in V])
  np.testing.assert_allclose(result.h, reference, atol=1e-6)
  assert np.sum(result.h == 0) > 0  # the penalty does make codes sparse


@pytest.mark.parametrize("dtype", DTYPES)
def test_kkt_conditions(dtype):
  W, V = random_problem(2, m=25, d=15, n=20, dtype=dtype)
  mu = 0.3
  h = np.asarray(conejax.nnls(W, V, mu).h, np.float64)
  grad = (h @ W.T - V) @ W + mu
  scale = np.max(np.abs(V @ W), axis=1, keepdims=True)
  tol = 1e-4 if dtype == np.float32 else 1e-8
  assert np.all(h >= 0)
  assert np.all(grad / scale >= -tol)                      # dual feasibility
  assert np.all(np.abs(h * grad) / scale <= tol * (1 + h))  # complementary slackness


def test_gram_form_equals_dictionary_form():
  W, V = random_problem(3, m=20, d=6, n=9)
  direct = conejax.nnls(W, V, 0.1)
  gram = conejax.nnls_gram(W.T @ W, V @ W, 0.1)
  np.testing.assert_allclose(direct.h, gram.h, atol=1e-12)


def test_vmap_over_samples_equals_loop_and_batch():
  W, V = random_problem(4, m=20, d=6, n=7)
  batch = conejax.nnls(W, V).h
  vmapped = jax.vmap(lambda v: conejax.nnls(W, v).h)(V)
  looped = np.stack([conejax.nnls(W, v).h for v in V])
  np.testing.assert_allclose(vmapped, looped, atol=1e-9)
  np.testing.assert_allclose(batch, looped, atol=1e-9)


def test_stacked_dictionaries_equal_one_at_a_time():
  W, V = random_problem(5, m=20, d=6, n=7)
  stack = np.stack([W, W[::-1] * 2, np.sqrt(W)])
  out = conejax.nnls(stack, V)
  assert out.h.shape == (7, 3, 6) and out.n_iter.shape == (7, 3)
  vmapped = jax.vmap(lambda w: conejax.nnls(w, V).h, out_axes=1)(stack)
  for k in range(3):
    np.testing.assert_allclose(out.h[:, k], conejax.nnls(stack[k], V).h, atol=1e-12)
  np.testing.assert_allclose(out.h, vmapped, atol=1e-9)


def test_chunking_does_not_change_the_answer():
  W, V = random_problem(6, m=20, d=6, n=50)
  whole = conejax.nnls(W, V, batch_size=64).h
  chunked = conejax.nnls(W, V, batch_size=7).h
  np.testing.assert_allclose(chunked, whole, atol=1e-9)


def test_warm_start_at_the_solution_takes_no_step():
  W, V = random_problem(7, m=20, d=6, n=5)
  cold = conejax.nnls(W, V, solver="apg")
  warm = conejax.nnls(W, V, h0=cold.h, solver="apg")
  assert np.all(cold.n_iter > 0) and np.all(warm.n_iter == 0)
  np.testing.assert_array_equal(warm.h, cold.h)


def test_user_loop_with_init_and_step():
  W, V = random_problem(8, m=20, d=6, n=4)
  apg = conejax.solvers.APG()
  problem = conejax.solvers.QuadraticProblem(W.T @ W, V @ W, 0.0)
  aux = apg.prepare(problem)
  state = apg.init(problem, aux, np.zeros((4, 6)))
  for _ in range(300):
    state = apg.step(problem, aux, state)
  np.testing.assert_allclose(state.h, conejax.nnls(W, V).h, atol=1e-8)


def test_gradient_matches_finite_differences():
  W, V = random_problem(9, m=12, d=5, n=3)
  weights = np.random.default_rng(0).standard_normal((3, 5))
  loss = lambda W, V, mu: jnp.sum(weights * conejax.nnls(W, V, mu, solver="apg",
                                                        tol=1e-14, max_iter=5000).h)
  grads = jax.grad(loss, argnums=(0, 1, 2))(W, V, 0.2)
  eps = 1e-6
  for arg, grad in zip((W, V, 0.2), grads):
    arg = np.asarray(arg, np.float64)
    direction = np.random.default_rng(1).standard_normal(arg.shape)
    args = [W, V, 0.2]
    index = [x is arg for x in (W, V)].index(True) if arg.ndim else 2
    plus, minus = list(args), list(args)
    plus[index], minus[index] = arg + eps * direction, arg - eps * direction
    numeric = (loss(*plus) - loss(*minus)) / (2 * eps)
    np.testing.assert_allclose(np.sum(grad * direction), numeric, rtol=1e-5, atol=1e-8)


def test_no_recompilation_on_second_call():
  W, V = random_problem(10, m=20, d=6, n=5, dtype=np.float32)
  conejax.nnls(W, V)
  before = conejax._nnls.solve_dictionary._cache_size()
  conejax.nnls(W + 1, V * 2, 0.5)
  assert conejax._nnls.solve_dictionary._cache_size() == before


@pytest.mark.parametrize("call, message", [
    (lambda W, V: conejax.nnls(W, V[:, :-1]), "V must have shape"),
    (lambda W, V: conejax.nnls(W[0], V), "W must have shape"),
    (lambda W, V: conejax.nnls(W, V, -1.0), "mu must be a finite number >= 0"),
    (lambda W, V: conejax.nnls(W, V.astype(np.int32)), "floating-point"),
    (lambda W, V: conejax.nnls(W, np.where(V > 1, np.nan, V)), "NaN or Inf"),
    (lambda W, V: conejax.nnls(W, V, max_iter=0), "max_iter must be a positive integer"),
    (lambda W, V: conejax.nnls(W, V, h0=np.zeros(3)), "h0 must have the shape"),
    (lambda W, V: conejax.nnls_gram(W, V), "G must be"),
])
def test_bad_input_raises_a_clear_error(call, message):
  W, V = random_problem(11, m=8, d=3, n=4)
  with pytest.raises(ValueError, match=message):
    call(W, V)


def test_shape_errors_raise_under_jit():
  W, V = random_problem(12, m=8, d=3, n=4)
  with pytest.raises(ValueError, match="V must have shape"):
    jax.jit(conejax.nnls)(W, V[:, :5])


def test_degenerate_inputs_give_no_nan():
  W = np.zeros((6, 3))
  W[:, 0] = 1.0  # two dead atoms
  V = np.stack([np.zeros(6), np.ones(6), -np.ones(6)])
  h = np.asarray(conejax.nnls(W, V, 0.1).h)
  assert np.all(np.isfinite(h))
  np.testing.assert_allclose(h, [[0, 0, 0], [(6 - 0.1) / 6, 0, 0], [0, 0, 0]], atol=1e-9)


SCALES = [1e-20, 1e-12, 1.0, 1e12, 1e20]
# (atom scale, data scale) pairs whose codes, scaled by data / atoms, stay in float32's range
SCALE_PAIRS = [(a, b) for a in SCALES for b in SCALES if 1e-30 < b / a < 1e30]


@pytest.mark.parametrize("atom_scale, data_scale", SCALE_PAIRS)
def test_codes_are_equivariant_to_the_scale_of_data_and_atoms(data_scale, atom_scale):
  """h*(a W, b V; a b mu) = (b / a) h*(W, V; mu) in float32 across the float range.

  The scales are not powers of two, so a W differs from W by rounding (the tolerance). The
  penalty is 0 where a b mu would leave the float32 range.
  """
  W, V = random_problem(21, m=20, d=5, n=6, dtype=np.float32)
  W, V = np.abs(W), np.abs(V)
  mu = 0.05 if 1e-30 < atom_scale * data_scale < 1e30 else 0.0
  expected = np.asarray(conejax.nnls(W, V, mu).h, np.float64) * data_scale / atom_scale
  out = conejax.nnls(W * np.float32(atom_scale), V * np.float32(data_scale),
                     mu * atom_scale * data_scale)
  assert np.all(np.asarray(out.converged))
  np.testing.assert_allclose(out.h, expected, rtol=1e-5, atol=1e-5 * np.max(expected))
  if not (1e-30 < atom_scale**2 < 1e30 and 1e-30 < atom_scale * data_scale < 1e30):
    return  # G = W^T W or C = V W itself leaves float32's range: only W and V can be given
  G, C = W.T @ W, V @ W
  gram = conejax.nnls_gram(G * np.float32(atom_scale**2), C * np.float32(atom_scale * data_scale),
                           mu * atom_scale * data_scale)
  np.testing.assert_allclose(gram.h, expected, rtol=1e-5, atol=1e-5 * np.max(expected))


def test_stacked_dictionaries_of_different_scales():
  W, V = random_problem(22, m=20, d=5, n=6, dtype=np.float32)
  W3 = np.stack([W * np.float32(1e-18), W, W * np.float32(1e18)])
  h = np.asarray(conejax.nnls(W3, V).h, np.float64)                 # (n, 3, d)
  alone = np.asarray(conejax.nnls(W, V).h, np.float64)
  for k, scale in enumerate([1e-18, 1.0, 1e18]):
    np.testing.assert_allclose(h[:, k] * scale, alone, rtol=1e-5, atol=1e-5 * alone.max())


@pytest.mark.parametrize("solver", ["active_set", "apg", "admm"])
def test_a_nan_sample_gets_nan_codes_under_jit_and_leaves_the_others(solver):
  W, V = random_problem(23, m=20, d=5, n=6)
  bad = V.copy()
  bad[2, 4] = np.nan
  out = jax.jit(lambda W, V: conejax.nnls(W, V, solver=solver))(W, bad)
  assert np.all(np.isnan(out.h[2])) and np.isnan(out.residual[2]) and not out.converged[2]
  good = np.array([0, 1, 3, 4, 5])
  np.testing.assert_allclose(out.h[good], conejax.nnls(W, V[good], solver=solver).h,
                             rtol=1e-12, atol=1e-12)
  assert np.all(np.asarray(out.converged[good]))
  nan_atoms = jax.jit(conejax.nnls)(np.where(np.arange(5) == 1, np.nan, W), V)
  assert np.all(np.isnan(nan_atoms.h))


@pytest.mark.parametrize("G, message", [
    (-np.eye(3), "G must be positive semi-definite"),
    (np.array([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]]), "G must be symmetric"),
])
def test_gram_must_be_symmetric_positive_semidefinite(G, message):
  with pytest.raises(ValueError, match=message):
    conejax.nnls_gram(G, np.ones((2, 3)))
