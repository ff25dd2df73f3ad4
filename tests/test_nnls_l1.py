"""Sparse non-negative least absolute deviations against a linear program and its dual."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from scipy.optimize import linprog

import conejax
from conejax import _nnls_l1, solvers
from conejax._nnls_l1 import nnls_l1

DTYPES = [np.float32, np.float64]


def l1_problem(seed, k=40, d=10, n=8, dtype=np.float64, outliers=0.2):
  """A non-negative dictionary (k, d) and samples B h + noise with gross outliers."""
  rng = np.random.default_rng(seed)
  B = rng.random((k, d))
  V = rng.random((n, d)) @ B.T + 0.05 * rng.standard_normal((n, k))
  mask = rng.random((n, k)) < outliers
  V[mask] = rng.uniform(-3, 6, mask.sum())
  return B.astype(dtype), V.astype(dtype)


def l1_objective(B, V, H, mu=0.0):
  """||B h - v||_1 + mu sum(h) per row, in float64."""
  B, V, H = (np.asarray(a, np.float64) for a in (B, V, H))
  return np.sum(np.abs(H @ B.T - V), axis=-1) + mu * np.sum(H, axis=-1)


def linprog_l1(B, V, mu=0.0):
  """Exact optima by HiGHS: min 1^T t + mu 1^T h s.t. -t <= B h - v <= t, h, t >= 0."""
  B = np.asarray(B, np.float64)
  k, d = B.shape
  cost = np.concatenate([np.full(d, mu), np.ones(k)])
  A = np.block([[B, -np.eye(k)], [-B, -np.eye(k)]])
  out = []
  for v in np.asarray(V, np.float64):
    lp = linprog(cost, A_ub=A, b_ub=np.concatenate([v, -v]), bounds=(0, None), method="highs")
    assert lp.status == 0
    out.append(lp.x[:d])
  return np.stack(out)


def tolerance(dtype):
  # error <= tol bounds (P(h) - P*) / ||v||_1 for non-negative B, up to rounding.
  return default_tol(dtype) + 50 * np.finfo(dtype).eps


def default_tol(dtype):
  return solvers.PDHG().default_tol(dtype)


def kernel(B, V, mu=0.0, solver=solvers.PDHG()):
  """The vmappable kernel: the driver on one L1 problem, without value checks."""
  return solvers.solve(solver, solvers.L1Problem(B, V, mu))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mu", [0.0, 0.5, 4.0])
def test_matches_linear_program(dtype, mu):
  B, V = l1_problem(0, dtype=dtype)
  result = nnls_l1(B, V, mu)
  assert result.h.dtype == dtype and result.h.shape == (8, 10) and np.all(result.h >= 0)
  assert np.all(result.residual <= default_tol(dtype)) and np.all(result.converged)
  ours, exact = l1_objective(B, V, result.h, mu), l1_objective(B, V, linprog_l1(B, V, mu), mu)
  scale = np.sum(np.abs(np.asarray(V, np.float64)), axis=1)
  assert np.max((ours - exact) / scale) <= tolerance(dtype)
  assert np.min((ours - exact) / scale) >= -1e-9  # HiGHS is exact: never beaten


@pytest.mark.parametrize("dtype", DTYPES)
def test_codes_match_a_unique_lp_solution(dtype):
  B, V = l1_problem(1, dtype=dtype, outliers=0.1)
  exact = linprog_l1(B, V)
  h = nnls_l1(B, V).h  # codes are O(1); their error is ~30x the objective tolerance
  np.testing.assert_allclose(h, exact, atol=1e-2 if dtype == np.float32 else 1e-5)


def test_plain_steps_reach_the_same_optimum():
  B, V = l1_problem(2)
  plain = nnls_l1(B, V, 0.3, solver=solvers.PDHG(precondition=False, max_iter=20_000))
  exact = l1_objective(B, V, linprog_l1(B, V, 0.3), 0.3)
  assert np.all(plain.residual <= default_tol(np.float64)) and np.all(plain.converged)
  assert np.max((l1_objective(B, V, plain.h, 0.3) - exact) / np.abs(V).sum(1)) <= 1e-7


def test_dual_certifies_optimality():
  B, V = l1_problem(3)
  mu = 0.2

  solver = solvers.PDHG(tol=1e-9)

  @jax.jit
  def user_loop(B, V, mu):  # prepare, init and step compose into the user's own loop
    problem = solvers.L1Problem(B, V, mu)
    aux = solver.prepare(problem)
    state = solver.init(problem, aux, jnp.zeros((V.shape[0], B.shape[1]), V.dtype))
    state = lax.while_loop(lambda s: jnp.any(solver.residual(problem, aux, s) > 1e-9),
                           lambda s: solver.step(problem, aux, s), state)
    return state, solver.solution(problem, aux, state)

  state, solution = user_loop(B, V, mu)
  h, y = np.asarray(state.h), np.asarray(state.y)
  np.testing.assert_array_equal(solution, h)
  np.testing.assert_array_equal(state.h_z, h)  # converged samples sit at the certified point
  assert np.all(h >= 0) and np.all(np.abs(y) <= 1)
  slack = y @ B + mu  # dual feasibility: B^T y + mu >= 0
  assert np.min(slack / B.sum(0)) >= -1e-9
  dual = -np.sum(y * V, axis=1)  # a lower bound on the optimum once feasible
  exact = l1_objective(B, V, linprog_l1(B, V, mu), mu)
  scale = np.abs(V).sum(1)
  np.testing.assert_allclose(dual / scale, exact / scale, atol=1e-8)
  np.testing.assert_allclose(l1_objective(B, V, h, mu) / scale, dual / scale, atol=1e-8)
  assert np.max(np.abs(h * slack) / scale[:, None]) <= 1e-8  # complementary slackness


def test_iterates_stay_feasible_in_a_user_loop():
  B, V = l1_problem(4)
  solver = solvers.PDHG(tol=0.0)  # steps every sample
  problem = solvers.L1Problem(B, V, 0.1)
  aux = jax.jit(solver.prepare)(problem)
  state = jax.jit(solver.init)(problem, aux, np.full((8, 10), -1.0))
  assert np.all(state.h == 0)
  step = jax.jit(solver.step)
  for _ in range(50):
    state = step(problem, aux, state)
    assert np.all(state.h >= 0) and np.all(np.abs(state.y) <= 1)


def test_rescaling_changes_nothing_but_the_scale():
  # Powers of 2 scale exactly, so the iterates are exactly equivariant.
  B, V = l1_problem(5)
  base = nnls_l1(B, V, 0.3)
  scaled = nnls_l1(4 * B, 8 * V, 4 * 0.3)
  np.testing.assert_array_equal(scaled.n_iter, base.n_iter)
  np.testing.assert_allclose(scaled.h, 2 * base.h, rtol=1e-12, atol=1e-14)


def test_jit_equals_eager():
  B, V = l1_problem(6, dtype=np.float32)
  eager = nnls_l1(B, V, 0.5)
  jitted = jax.jit(nnls_l1)(B, V, 0.5)
  np.testing.assert_array_equal(jitted.n_iter, eager.n_iter)
  np.testing.assert_allclose(jitted.h, eager.h, atol=1e-6)


def test_vmap_over_samples_equals_loop_and_batch():
  # Converged samples are frozen, so a sample's result does not depend on its batch.
  B, V = l1_problem(6)
  batch = nnls_l1(B, V).h
  vmapped = jax.vmap(lambda v: nnls_l1(B, v).h)(V)
  looped = np.stack([nnls_l1(B, v).h for v in V])
  np.testing.assert_allclose(vmapped, looped, atol=1e-12)
  np.testing.assert_allclose(batch, looped, atol=1e-12)


def test_stacked_dictionaries_by_vmap_equal_one_at_a_time():
  B, V = l1_problem(7)
  stack = np.stack([B, B[::-1] * 2, np.sqrt(B)])
  out = jax.vmap(lambda b: kernel(b, V))(stack)
  public = jax.vmap(lambda b: nnls_l1(b, V, 0.1).h)(stack)
  assert out.h.shape == (3, 8, 10) and out.n_iter.shape == (3, 8)
  for k in range(3):
    alone = nnls_l1(stack[k], V)
    np.testing.assert_allclose(l1_objective(stack[k], V, out.h[k]),
                               l1_objective(stack[k], V, alone.h), rtol=1e-6)
    np.testing.assert_allclose(public[k], nnls_l1(stack[k], V, 0.1).h, atol=1e-5)


def test_chunking_does_not_change_the_answer():
  B, V = l1_problem(8)
  whole, chunked = nnls_l1(B, V), nnls_l1(B, V, batch_size=3)
  np.testing.assert_allclose(chunked.h, whole.h, atol=1e-12)
  np.testing.assert_array_equal(chunked.n_iter, whole.n_iter)


def test_batch_axes_are_kept():
  B, V = l1_problem(9)
  out = nnls_l1(B, V.reshape(2, 4, 40))
  assert out.h.shape == (2, 4, 10) and out.n_iter.shape == (2, 4)
  np.testing.assert_allclose(out.h.reshape(8, 10), nnls_l1(B, V).h, atol=1e-12)


def test_zero_data_and_dead_atoms():
  B, V = l1_problem(10)
  B[:, 1] = 0.0  # a dead atom
  zero = nnls_l1(B, np.zeros_like(V), 0.1)
  np.testing.assert_array_equal(zero.h, 0)
  np.testing.assert_array_equal(zero.n_iter, 0)
  out = nnls_l1(B, V, 0.1)
  assert np.all(np.isfinite(out.h)) and np.all(out.h[:, 1] == 0)
  assert np.all(out.residual <= default_tol(np.float64)) and np.all(out.converged)
  assert np.all(np.isfinite(nnls_l1(np.zeros_like(B), V).h))


def test_robust_to_salt_and_pepper_where_least_squares_is_not():
  rng = np.random.default_rng(0)
  B = rng.random((64, 6)).astype(np.float32)
  h_true = rng.random((8, 6)).astype(np.float32)
  clean = h_true @ B.T
  V = clean.copy()
  mask = rng.random(V.shape) < 0.3
  V[mask] = rng.choice([0.0, 2 * clean.max()], mask.sum())
  l1 = np.asarray(nnls_l1(B, V).h)
  l2 = np.asarray(conejax.nnls(B, V).h)
  error = lambda h: np.linalg.norm(h - h_true) / np.linalg.norm(h_true)
  assert error(l1) < 1e-2 and error(l2) > 10 * error(l1)


def test_no_recompilation_on_second_call():
  B, V = l1_problem(12, dtype=np.float32)
  nnls_l1(B, V)
  before = _nnls_l1._nnls_l1_jit._cache_size()
  nnls_l1(B + 1, V * 2, 0.5)
  assert _nnls_l1._nnls_l1_jit._cache_size() == before


@pytest.mark.parametrize("call, message", [
    (lambda B, V: nnls_l1(B, V[:, :-1]), "V must have shape"),
    (lambda B, V: nnls_l1(B[0], V), "B must have shape"),
    (lambda B, V: nnls_l1(B, V, -1.0), "mu must be a finite number >= 0"),
    (lambda B, V: nnls_l1(B, V, np.ones(2)), "mu must be a scalar"),
    (lambda B, V: nnls_l1(B, V.astype(np.int32)), "floating-point"),
    (lambda B, V: nnls_l1(np.where(B > 0.5, np.inf, B), V), "NaN or Inf"),
    (lambda B, V: nnls_l1(B, V, max_iter=0), "max_iter must be a positive integer"),
    (lambda B, V: nnls_l1(B, V, batch_size=2.5), "batch_size must be a positive integer"),
    (lambda B, V: nnls_l1(B, V, tol=-1.0), "tol must be a finite number >= 0"),
    (lambda B, V: nnls_l1(B, V, h0=np.zeros(3)), "h0 must have the shape"),
    (lambda B, V: jax.vmap(lambda b: nnls_l1(b, V[:, :-1]))(np.stack([B, B])),
     "V must have shape"),
    (lambda B, V: nnls_l1(B, V, solver="admm"), r"solver must be one of \('auto', 'pdhg'\)"),
    (lambda B, V: nnls_l1(B, V, solver=solvers.APG()), "cannot solve this problem"),
    (lambda B, V: nnls_l1(B, V, solver=solvers.PDHG(), max_iter=10), "settings of the solver"),
    (lambda B, V: nnls_l1(B, V, solver=solvers.PDHG(), tol=1e-3), "settings of the solver"),
    (lambda B, V: kernel(B, V, solver=solvers.APG()), "APG solves QuadraticProblem"),
    (lambda B, V: solvers.PDHG(max_iter=0), "max_iter must be a positive integer"),
    (lambda B, V: solvers.PDHG(tol=np.nan), "tol must be a finite number >= 0"),
])
def test_bad_input_raises_a_clear_error(call, message):
  B, V = l1_problem(13, k=8, d=3, n=4)
  with pytest.raises(ValueError, match=message):
    call(B, V)


def test_shape_errors_raise_under_jit():
  B, V = l1_problem(14, k=8, d=3, n=4)
  with pytest.raises(ValueError, match="V must have shape"):
    jax.jit(nnls_l1)(B, V[:, :5])
  with pytest.raises(ValueError, match="V must have shape"):
    jax.vmap(lambda b: nnls_l1(b, V[:, :5]))(jnp.ones((2, 8, 3)))
