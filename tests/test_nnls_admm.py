"""The ADMM solver of sparse NNLS against scipy, scikit-learn, KKT conditions and APG."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import Lasso

import conejax
from conejax import operators, solvers
from helpers import TOL, nnls_objective, random_problem, scipy_nnls

DTYPES = [np.float32, np.float64]
identity = lambda f: f


def blurred_problem(seed, n=40):
  """An ill-conditioned problem (condition number ~800): 60 non-negative 12x12 atoms under
  a 5x5 box blur. Returns W (144, 60), the blur A, B = A W and observations V (n, 144)."""
  rng = np.random.default_rng(seed)
  W = rng.random((144, 60))
  A = operators.blur(np.ones((5, 5)) / 25, (12, 12), boundary="zero")
  B = np.asarray(operators.apply_to_dictionary(A, W))
  V = rng.random((n, 60)) @ B.T / 15 + 0.01 * rng.standard_normal((n, 144))
  return W, A, B, V


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transform", [identity, jax.jit], ids=["eager", "jit"])
def test_matches_scipy_on_random_problems(dtype, transform):
  W, V = random_problem(0, m=40, d=12, n=50, dtype=dtype)
  result = transform(lambda W, V: conejax.nnls(W, V, solver="admm"))(W, V)
  assert result.h.dtype == dtype and result.h.shape == (50, 12)
  assert np.all(result.h >= 0)
  assert np.all(result.residual <= solvers.ADMM().default_tol(dtype))
  assert np.all(result.converged)
  ours, exact = nnls_objective(W, V, result.h), nnls_objective(W, V, scipy_nnls(W, V))
  assert np.max((ours - exact) / exact) <= TOL[dtype]
  assert np.min(ours - exact) >= -TOL[dtype] * np.max(exact)


@pytest.mark.parametrize("mu", [0.05, 0.5])
def test_sparse_matches_positive_lasso(mu):
  W, V = random_problem(1, m=30, d=10, n=8)
  result = conejax.nnls(W, V, mu, solver="admm")
  lasso = Lasso(alpha=mu / W.shape[0], positive=True, fit_intercept=False, tol=1e-12,
                max_iter=100_000)
  reference = np.stack([lasso.fit(W, v).coef_ for v in V])
  np.testing.assert_allclose(result.h, reference, atol=1e-6)
  assert np.sum(result.h == 0) > 0


def test_kkt_conditions_on_an_ill_conditioned_problem():
  _, _, B, V = blurred_problem(2)
  mu = 1e-3
  h = np.asarray(conejax.nnls(B, V, mu, solver="admm", tol=1e-10, max_iter=50000).h)
  grad = (h @ B.T - V) @ B + mu
  scale = np.max(np.abs(V @ B), axis=1, keepdims=True)
  assert np.all(h >= 0)
  assert np.all(grad / scale >= -1e-8)                      # dual feasibility
  assert np.all(np.abs(h * grad) / scale <= 1e-8 * (1 + h))  # complementary slackness


@pytest.mark.parametrize("dtype", DTYPES)
def test_moderate_tolerance_in_fewer_iterations_and_closer_than_apg(dtype):
  _, _, B, V = blurred_problem(3)
  exact = nnls_objective(B, V, scipy_nnls(B, V))
  B, V = B.astype(dtype), V.astype(dtype)
  admm = conejax.nnls(B, V, solver="admm", tol=1e-4, max_iter=20000)
  apg = conejax.nnls(B, V, solver="apg", tol=1e-4, max_iter=20000)
  assert np.all(admm.residual <= 1e-4) and np.all(apg.residual <= 1e-4)
  assert np.max(admm.n_iter) * 3 < np.max(apg.n_iter)
  gap = lambda h: np.max((nnls_objective(B, V, h) - exact) / exact)
  assert 0 <= gap(admm.h) < gap(apg.h)


def test_vmap_jit_loop_and_chunks_agree():
  W, V = random_problem(4, m=20, d=6, n=30)
  solve = lambda v, **kw: conejax.nnls(W, v, 0.1, solver="admm", **kw).h
  batch = solve(V)
  looped = np.stack([solve(v) for v in V])
  np.testing.assert_allclose(jax.vmap(solve)(V), looped, atol=1e-9)
  np.testing.assert_allclose(batch, looped, atol=1e-8)
  np.testing.assert_allclose(solve(V, batch_size=7), batch, atol=1e-8)
  np.testing.assert_allclose(jax.jit(solve)(V), batch, atol=1e-12)


def test_warm_start_at_the_solution_takes_no_step():
  W, V = random_problem(7, m=20, d=6, n=5)
  cold = conejax.nnls(W, V, solver="admm")
  warm = conejax.nnls(W, V, solver="admm", h0=cold.h)
  assert np.all(cold.n_iter > 0) and np.all(warm.n_iter == 0)
  np.testing.assert_array_equal(warm.h, cold.h)


def test_max_iter_caps_the_iterations_exactly():
  _, _, B, V = blurred_problem(5)
  out = conejax.nnls(B, V, solver="admm", tol=1e-12, max_iter=25)
  assert np.max(out.n_iter) == 25 and np.all(out.residual > 1e-12)


@pytest.mark.parametrize("differentiation, options", [
    ("implicit", dict(tol=1e-13, max_iter=20000)), ("unroll", dict(max_iter=2000))])
def test_gradients_match_apg_and_finite_differences(differentiation, options):
  W, V = random_problem(9, m=12, d=5, n=3)
  weights = np.random.default_rng(0).standard_normal((3, 5))

  def loss(W, V, mu, solver):
    h = conejax.nnls(W, V, mu, solver=solver, differentiation=differentiation, **options).h
    return jnp.sum(weights * h)

  grads = jax.grad(loss, argnums=(0, 1, 2))(W, V, 0.2, "admm")
  reference = jax.grad(loss, argnums=(0, 1, 2))(W, V, 0.2, "apg")
  for ours, theirs in zip(grads, reference):
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9)
  direction = np.random.default_rng(1).standard_normal(V.shape)
  eps = 1e-6
  numeric = (loss(W, V + eps * direction, 0.2, "admm")
             - loss(W, V - eps * direction, 0.2, "admm")) / (2 * eps)
  np.testing.assert_allclose(np.sum(grads[1] * direction), numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reconstruct_and_separate_match_scipy(dtype):
  W, A, B, V = blurred_problem(6, n=20)
  W, V = W.astype(dtype), V.astype(dtype)
  exact_h = scipy_nnls(B, V)
  exact = nnls_objective(B, V, exact_h)
  # float64 solved tightly: the estimates themselves match. float32 at tol 1e-6 on this
  # ill-conditioned problem: the objective does (measured 4e-4; at the default tol 1e-5 the
  # gap is 1.3-3.1% depending on rounding, e.g. XLA's backend level, so that is not tested).
  options, gap_tol = ((dict(tol=1e-10, max_iter=50000), 1e-9) if dtype == np.float64 else
                      (dict(tol=1e-6, max_iter=20000), 5e-3))
  out = conejax.reconstruct(W, V, A, solver="admm", **options)
  assert out.u.dtype == dtype
  gap = (nnls_objective(B, V, out.h) - exact) / exact
  assert np.all(gap >= -1e-9) and np.max(gap) <= gap_tol
  cones, mixtures = np.stack([W[:, :30], W[:, 30:]]), (exact_h @ W.T).astype(dtype)
  parts = conejax.separate(cones, mixtures, wiener=False, solver="admm", **options)
  if dtype == np.float64:
    np.testing.assert_allclose(out.u, exact_h @ W.T, rtol=1e-5)
    np.testing.assert_allclose(parts[:, 0], exact_h[:, :30] @ W[:, :30].T, rtol=1e-5)
  np.testing.assert_allclose(parts.sum(1), mixtures, rtol=1e-5 if dtype == np.float64 else 1e-2)


@pytest.mark.parametrize("call, message", [
    (lambda W, V: conejax.nnls(W, V, solver="newton"), "solver must be one of"),
    (lambda W, V: conejax.reconstruct(W, V, loss="l1", solver="admm"),
     r"solver must be one of \('auto', 'pdhg'\)"),
    (lambda W, V: conejax.reconstruct(
        W, V, jax.vmap(operators.mask)(np.ones_like(V)), per_sample_operator=True,
        solver="admm"), "one operator shared by all samples"),
    (lambda W, V: conejax.separate(np.stack([W, W]), V, solver="cg"), "solver must be one of"),
])
def test_bad_solver_choices_raise_a_clear_error(call, message):
  W, V = random_problem(11, m=8, d=3, n=4)
  with pytest.raises(ValueError, match=message):
    call(W, V)
