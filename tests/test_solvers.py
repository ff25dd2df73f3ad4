"""The solver protocol: exactness of ActiveSet, batch invariance, the driver, warnings."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import Lasso

import conejax
from conejax import solvers
from helpers import nnls_objective, random_problem, scipy_nnls

DTYPES = [np.float32, np.float64]
GAP = {np.float32: 1e-5, np.float64: 1e-10}   # the exactness targets
SOLVERS = [solvers.ActiveSet(), solvers.APG(), solvers.ADMM()]
identity = lambda f: f


def ill_conditioned(seed, cond, m=60, d=20, n=30, dtype=np.float64):
  """W with cond(W^T W) = cond exactly (mixed signs) and samples with active constraints."""
  rng = np.random.default_rng(seed)
  U, _ = np.linalg.qr(rng.standard_normal((m, d)))
  Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  s = np.geomspace(1, 1 / np.sqrt(cond), d)
  W = U @ np.diag(s) @ Q.T
  V = rng.random((n, d)) @ W.T + 0.3 * rng.standard_normal((n, m))
  return W.astype(dtype), V.astype(dtype)


def relative_gap(W, V, H):
  exact = nnls_objective(W, V, scipy_nnls(W, V))
  return (nnls_objective(W, V, H) - exact) / np.maximum(exact, 1e-300)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cond", [1e2, 1e4, 1e6, 1e8])
def test_active_set_is_exact_at_any_conditioning(dtype, cond):
  W, V = ill_conditioned(0, cond, dtype=dtype)
  out = conejax.nnls(W, V)  # "auto" is the active set
  assert out.h.dtype == dtype and bool(np.all(out.converged))
  gap = relative_gap(W, V, out.h)
  assert np.max(gap) <= GAP[dtype], np.max(gap)
  assert np.min(gap) >= -GAP[dtype]


def test_apg_stops_short_on_ill_conditioned_float32_and_says_so():
  W, V = ill_conditioned(1, 1e6, dtype=np.float32)
  with pytest.warns(conejax.ConvergenceWarning, match="stopped at max_iter"):
    out = conejax.nnls(W, V, solver="apg")
  assert not np.all(out.converged)
  assert np.max(relative_gap(W, V, out.h)) > GAP[np.float32]  # what the active set fixes


def test_active_set_on_a_union_with_repeated_atoms():
  # A singular Gram matrix (every atom twice, as in unions of overlapping cones).
  W, V = random_problem(2, m=30, d=8, n=25)
  W = np.concatenate([W, W], axis=1)
  for dtype in DTYPES:
    out = conejax.nnls(W.astype(dtype), V.astype(dtype))
    assert bool(np.all(out.converged)) and np.all(np.isfinite(out.h))
    assert np.max(relative_gap(W, V, out.h)) <= GAP[dtype]


@pytest.mark.parametrize("mu", [0.05, 0.5])
def test_active_set_matches_positive_lasso(mu):
  W, V = random_problem(3, m=30, d=10, n=8)
  out = conejax.nnls(W, V, mu, solver=solvers.ActiveSet())
  lasso = Lasso(alpha=mu / W.shape[0], positive=True, fit_intercept=False, tol=1e-12,
                max_iter=100_000)
  reference = np.stack([lasso.fit(W, v).coef_ for v in V])
  np.testing.assert_allclose(out.h, reference, atol=1e-7)


# A code solved in a batch of 40 and alone, from the same right-hand side, is bitwise the
# same for every solver at XLA's default flags (as users run it; the subprocess test below):
# the driver freezes converged samples, and a lone row is solved as two copies (XLA:CPU's
# matrix-vector product for one row rounds differently from a batch's matrix product;
# float32 codes differed by up to 2e-5 before, on MNIST cones). The suite's quick compiler
# flags (tests/conftest.py: the legacy loop emitters) round a batch's products differently
# from a lone row's, so here the exact active set is held to the invariance targets
# (1e-6 relative in float32, 1e-12 in float64) and the iterative solvers, whose answers
# then differ by their stopping tolerance, to 2e-5 in float32 (measured 5e-6).
INVARIANCE = {np.float32: 1e-6, np.float64: 1e-12}
ITERATIVE_INVARIANCE = {np.float32: 2e-5, np.float64: 1e-12}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: type(s).__name__)
def test_a_code_does_not_depend_on_its_batch(dtype, solver):
  W, V = random_problem(4, m=30, d=12, n=40, dtype=dtype)
  G, C = W.T @ W, V @ W
  batch = np.asarray(conejax.nnls_gram(G, C, 0.1, solver=solver).h, np.float64)
  alone = np.stack([np.asarray(conejax.nnls_gram(G, c[None], 0.1, solver=solver).h[0],
                               np.float64) for c in C])
  looped = np.stack([np.asarray(conejax.nnls(W, v, 0.1, solver=solver).h) for v in V])
  whole = np.asarray(conejax.nnls(W, V, 0.1, solver=solver).h)
  bound = (INVARIANCE if isinstance(solver, solvers.ActiveSet) else ITERATIVE_INVARIANCE)[dtype]
  scale = np.max(np.abs(alone), axis=1, keepdims=True)
  assert np.max(np.abs(batch - alone) / scale) <= bound
  assert np.max(np.abs(whole - looped) / scale) <= bound


def _fista_reference(G, C, mu, lipschitz, h0, n_steps):
  """The warm start's recurrence in NumPy float64, one row at a time."""
  out = []
  for c, m, h in zip(C, np.broadcast_to(mu, C.shape), h0):
    y = h.copy()
    for k in range(n_steps):
      h_new = np.maximum(y - (G @ y - c + m) / lipschitz, 0)
      y, h = h_new + k / (k + 3) * (h_new - h), h_new
    out.append(h)
  return np.stack(out)


@pytest.mark.parametrize("mu", ["shared", "per-sample"])
def test_warm_start_equals_a_numpy_fista_row_by_row(mu):
  """``_apg.iterate`` (the active set's warm start and the driver's fallback) is FISTA with
  the momentum (k - 1) / (k + 2), row by row as a float64 NumPy loop computes it; its
  unrolled loop runs 5 steps a pass, so 13 steps check a partial pass too. It is a descent
  towards the exact NNLS solution, not a no-op."""
  from conejax.solvers import _apg
  from conejax.solvers._protocol import QuadraticProblem
  W, V = random_problem(6, m=30, d=12, n=40)
  G, C = W.T @ W, V @ W
  penalty = np.float64(0.1) if mu == "shared" else np.linspace(0, 0.2, 40)[:, None]
  lipschitz = float(np.linalg.eigvalsh(G)[-1])
  h0 = np.zeros_like(C)
  problem = QuadraticProblem(jnp.asarray(G), jnp.asarray(C), jnp.asarray(penalty))
  for n_steps in (13, 30):
    ours = np.asarray(_apg.iterate(problem, lipschitz, jnp.asarray(h0), n_steps))
    np.testing.assert_allclose(ours, _fista_reference(G, C, penalty, lipschitz, h0, n_steps),
                               rtol=1e-10, atol=1e-12)
  if mu == "shared":  # 30 steps close most of the gap to the exact answer
    objective = lambda H: 0.5 * np.einsum("nd,de,ne->", H, G, H) - np.sum((C - penalty) * H)
    exact = objective(np.asarray(conejax.nnls_gram(G, C, penalty).h))
    assert objective(ours) - exact < 0.05 * (objective(h0) - exact)


INVARIANCE_SCRIPT = """
import numpy as np, jax, conejax
from conejax import solvers
jax.config.update("jax_enable_x64", True)
rng = np.random.default_rng(4)
for dtype in (np.float32, np.float64):
  W = rng.random((30, 12)).astype(dtype); V = rng.random((40, 30)).astype(dtype)
  for solver in (solvers.ActiveSet(), solvers.APG(), solvers.ADMM()):
    whole = np.asarray(conejax.nnls(W, V, 0.1, solver=solver).h)
    alone = np.stack([np.asarray(conejax.nnls(W, v, 0.1, solver=solver).h) for v in V])
    print(np.dtype(dtype).name, type(solver).__name__, np.max(np.abs(whole - alone)))
  # 300 rows in one batch against pieces of 10 rows
  V = rng.random((300, 30)).astype(dtype)
  whole = np.asarray(conejax.nnls(W, V, 0.1).h)
  pieces = np.concatenate([np.asarray(conejax.nnls(W, v, 0.1).h) for v in np.split(V, 30)])
  print(np.dtype(dtype).name, "300 rows in pieces", np.max(np.abs(whole - pieces)))
  # supports above 16 of 40 atoms (conjugate gradients in blocks of fixed size) through
  # nnls(W, V), whose product V W XLA:CPU rounds by batch size below about 50 rows at
  # m = 120 (so fewer than 64 samples are padded to 64); the Gram form's CG blocks are
  # tested in the suite (test_large_support_codes_do_not_depend_on_their_batch)
  W2 = rng.random((120, 40)).astype(dtype)
  V2 = (rng.random((200, 40)) @ W2.T + 0.1 * rng.standard_normal((200, 120))).astype(dtype)
  solve = lambda X: np.asarray(conejax.nnls(W2, X).h)
  whole = solve(V2)
  pieces = np.concatenate([solve(r) for r in np.split(V2, 20)])
  alone = np.stack([solve(r) for r in V2[:20]])
  assert np.mean(np.sum(whole > 0, axis=1) > 16) > 0.5
  worst = max(np.max(np.abs(whole - pieces)), np.max(np.abs(whole[:20] - alone)))
  print(np.dtype(dtype).name, "large supports", worst)
"""


def test_batch_invariance_at_the_default_compiler_level():
  """Bitwise: every solver, float32 and float64, a batch of 40 against each sample alone,
  and the exact default on 300 rows against pieces of 10 and on supports above 16 (solved
  by conjugate gradients) against pieces and lone samples, in a process with XLA's default
  flags (as users run it), not the suite's quick ones."""
  import os
  import subprocess
  import sys
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  run = subprocess.run([sys.executable, "-c", INVARIANCE_SCRIPT], capture_output=True,
                       text=True, env=dict(env, JAX_PLATFORMS="cpu"), timeout=300, check=False)
  assert run.returncode == 0, run.stderr[-2000:]
  lines = [line for line in run.stdout.split("\n") if line.startswith("float")]
  assert len(lines) == 10, run.stdout
  for line in lines:
    assert line.endswith(" 0.0"), line


@pytest.mark.parametrize("transform", [identity, jax.jit], ids=["eager", "jit"])
def test_active_set_under_jit_and_vmap(transform):
  W, V = random_problem(5, m=20, d=6, n=9)
  solve = lambda W, V: conejax.nnls(W, V, solver="active_set").h
  batch = transform(solve)(W, V)
  vmapped = jax.vmap(lambda v: solve(W, v))(V)
  looped = np.stack([solve(W, v) for v in V])
  np.testing.assert_allclose(batch, looped, atol=1e-12)
  np.testing.assert_allclose(vmapped, looped, atol=1e-12)


# Jitted once for the module: every case below has the same shapes.
_solve_on_support = jax.jit(solvers.solve_on_support, static_argnames="one_size")


@pytest.mark.parametrize("size, one_size", [(3, False), (15, False), (17, False), (40, False),
                                            (40, True)])
def test_solve_on_support_matches_numpy(size, one_size):
  rng = np.random.default_rng(size)
  d, n = 40, 150   # more than one overflow block of 64 rows when size > 16
  B = rng.standard_normal((60, d))
  G = B.T @ B
  Q = rng.standard_normal((n, d))
  support = np.zeros((n, d), bool)
  for i in range(n):
    support[i, rng.choice(d, size=rng.integers(0, size + 1), replace=False)] = True
  x = np.asarray(_solve_on_support(jnp.asarray(G), jnp.asarray(Q), jnp.asarray(support),
                                   one_size=one_size))
  for i in range(n):
    S = support[i]
    expected = np.zeros(d)
    if S.any():
      expected[S] = np.linalg.solve(G[np.ix_(S, S)], Q[i, S])
    np.testing.assert_allclose(x[i], expected, rtol=1e-9, atol=1e-9)


def test_solve_on_support_solves_only_the_rows_asked_for():
  rng = np.random.default_rng(7)
  d, n = 30, 200
  B = rng.standard_normal((50, d))
  G = B.T @ B
  Q = rng.standard_normal((n, d))
  support = rng.random((n, d)) < rng.uniform(0.1, 0.9, (n, 1))  # every bucket of plan(30)
  rows = rng.random(n) < 0.3
  out = rng.standard_normal((n, d))
  x = np.asarray(solvers.solve_on_support(jnp.asarray(G), jnp.asarray(Q), jnp.asarray(support),
                                          rows=jnp.asarray(rows), out=jnp.asarray(out)))
  np.testing.assert_array_equal(x[~rows], out[~rows])
  for i in np.flatnonzero(rows):
    S = support[i]
    expected = np.zeros(d)
    expected[S] = np.linalg.solve(G[np.ix_(S, S)], Q[i, S])
    np.testing.assert_allclose(x[i], expected, rtol=1e-9, atol=1e-9)


def _large_supports(seed, cond, dtype, d=40, n=300):
  """G (d, d) with cond(G) = cond, right sides and supports of 17 to d variables (above
  the unrolled kernel's 16, so they go to the conjugate gradients)."""
  rng = np.random.default_rng(seed)
  Qm, _ = np.linalg.qr(rng.standard_normal((d, d)))
  G = (Qm * np.geomspace(1, 1 / cond, d)) @ Qm.T
  Q = rng.standard_normal((n, d))
  support = np.zeros((n, d), bool)
  for i in range(n):
    support[i, rng.choice(d, size=rng.integers(17, d + 1), replace=False)] = True
  return G.astype(dtype), Q.astype(dtype), support


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cond", [30.0, 1e7])
def test_large_supports_by_conjugate_gradients_or_cholesky_are_exact(dtype, cond):
  """Supports above 16 are solved by CG (well-conditioned: its true residual meets the
  rounding bound) or, where CG does not get there (cond 1e7), by the looped Cholesky:
  either way the answer is numpy's solve to the precision of the dtype (well-conditioned)
  or has a residual at rounding level (ill-conditioned)."""
  from conejax.solvers import _linalg
  G, Q, support = _large_supports(3, cond, dtype)
  Gj, Qj, Sj = jnp.asarray(G), jnp.asarray(Q), jnp.asarray(support)
  _, ok = _linalg._conjugate_gradient(Gj, Qj, Sj)
  expect_cg = cond < 1e3 and dtype == np.float32  # float64 CG needs more than 32 iterations
  if expect_cg:
    assert bool(jnp.all(ok))
  if cond > 1e3:
    assert float(jnp.mean(ok)) < 0.5  # most rows: the Cholesky fallback is tested here
  G64 = G.astype(np.float64)
  expected = np.zeros(Q.shape)
  for i, S in enumerate(support):
    expected[i, S] = np.linalg.solve(G64[np.ix_(S, S)], Q[i, S].astype(np.float64))
  # forward error bound: cond(G_SS) times the backward error the solve is held to
  tol = (300 if dtype == np.float32 else 3e4) * np.finfo(dtype).eps * min(cond, 1e3)
  scale = np.max(np.abs(expected), axis=1, keepdims=True)
  x = np.asarray(_solve_on_support(Gj, Qj, Sj), np.float64)
  assert np.all(x[~support] == 0)
  if cond < 1e3:
    assert np.max(np.abs(x - expected) / scale) < tol
  else:  # ill-conditioned: the residual is at rounding level instead
    residual = np.where(support, Q - x @ G64, 0)
    bound = np.asarray(_linalg.residual_bound(Gj, Qj, jnp.asarray(x, dtype)))
    assert np.all(np.max(np.abs(residual), axis=1) <= 4 * bound)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_support_codes_do_not_depend_on_their_batch(dtype):
  """On supports above 16 (dense codes on 40 atoms, solved by CG where it converges, each
  row stopping on its own) a code equals its code solved alone."""
  rng = np.random.default_rng(11)
  W = rng.random((120, 40)).astype(dtype)
  V = (rng.random((60, 40)) @ W.T + 0.1 * rng.standard_normal((60, 120))).astype(dtype)
  G, C = W.T @ W, V @ W
  batch = np.asarray(conejax.nnls_gram(G, C).h, np.float64)
  assert np.mean(np.sum(batch > 0, axis=1) > 16) > 0.5
  alone = np.stack([np.asarray(conejax.nnls_gram(G, c[None]).h[0], np.float64) for c in C])
  scale = np.max(np.abs(alone), axis=1, keepdims=True)
  assert np.max(np.abs(batch - alone) / scale) <= INVARIANCE[dtype]
  gap = relative_gap(W.astype(np.float64), V.astype(np.float64), batch)
  assert np.max(gap) <= (1e-5 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: type(s).__name__)
def test_user_loop_with_the_protocol(solver):
  W, V = random_problem(6, m=20, d=6, n=4)
  problem = solvers.QuadraticProblem(jnp.asarray(W.T @ W), jnp.asarray(V @ W), jnp.asarray(0.1))
  aux = solver.prepare(problem)
  state = solver.init(problem, aux, jnp.zeros((4, 6)))
  for _ in range(3000 if not isinstance(solver, solvers.ActiveSet) else 10):
    state = solver.step(problem, aux, state)
  h = solver.solution(problem, aux, state)
  np.testing.assert_allclose(h, conejax.nnls(W, V, 0.1).h, atol=1e-8)
  assert np.all(np.asarray(solver.residual(problem, aux, state)) <= max(
      solver.stopping_tol(np.float64), 1e-10))


def test_implicit_gradient_of_the_exact_solution():
  W, V = random_problem(7, m=12, d=5, n=3)
  weights = np.random.default_rng(0).standard_normal((3, 5))
  loss = lambda W, V, mu: jnp.sum(weights * conejax.nnls(W, V, mu).h)
  grads = jax.grad(loss, argnums=(0, 1, 2))(W, V, 0.2)
  eps = 1e-6
  for index, grad in enumerate(grads):
    args = [np.asarray(W), np.asarray(V), np.asarray(0.2)]
    direction = np.random.default_rng(index).standard_normal(args[index].shape)
    plus, minus = list(args), list(args)
    plus[index] = args[index] + eps * direction
    minus[index] = args[index] - eps * direction
    numeric = (loss(*plus) - loss(*minus)) / (2 * eps)
    np.testing.assert_allclose(np.sum(grad * direction), numeric, rtol=1e-5, atol=1e-8)


def test_paths_without_gradients_raise_a_clear_error():
  W, V = random_problem(8, m=12, d=5, n=3)
  with pytest.raises(ValueError, match="has none to unroll"):
    conejax.nnls(W, V, solver="active_set", differentiation="unroll")
  with pytest.raises(ValueError, match="not differentiable"):
    jax.grad(lambda V: conejax.nnls_l1(W, V).h.sum())(V)


def test_relative_penalty_is_a_fraction_of_the_largest_useful_one():
  W, V = random_problem(9, m=20, d=6, n=5)
  W, V = np.abs(W), np.abs(V)
  top = np.max(V @ W, axis=1)
  relative = conejax.nnls(W, V * 1e-6, 0.3, penalty="relative").h
  for i in range(5):
    absolute = conejax.nnls(W, V[i] * 1e-6, 0.3 * top[i] * 1e-6).h
    np.testing.assert_allclose(relative[i], absolute, rtol=1e-9, atol=1e-20)
  assert np.all(np.asarray(conejax.nnls(W, V, 1.0, penalty="relative").h) == 0)


def test_a_penalty_that_zeroes_the_codes_is_reported():
  W, V = random_problem(10, m=20, d=6, n=5)
  W, V = np.abs(W), np.abs(V) * 1e-5
  with pytest.warns(UserWarning, match="zeroes every code of 5 of 5 samples.*largest useful"):
    conejax.nnls(W, V, 0.1)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    conejax.nnls(W, V, 0.1, penalty="relative")
    conejax.nnls(W, V, 0.0)


@pytest.mark.parametrize("make, message", [
    (lambda: solvers.ActiveSet(max_iter=0), "max_iter must be a positive integer"),
    (lambda: solvers.ActiveSet(warm_start=-1), "warm_start must be an integer >= 0"),
    (lambda: solvers.APG(tol=-1.0), "tol must be a finite number >= 0"),
    (lambda: solvers.ADMM(rho=0.0), "ADMM needs rho > 0"),
    (lambda: solvers.resolve(solvers.APG(), max_iter=5), "settings of the solver object"),
    (lambda: solvers.resolve("newton"), "solver must be one of"),
    (lambda: solvers.resolve(solvers.APG(), loss="l1"), "cannot solve this problem"),
    (lambda: conejax.nnls(np.eye(3), np.ones(3), penalty="scaled"), "penalty must be one of"),
])
def test_bad_settings_raise_a_clear_error(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_solvers_are_hashable_static_settings():
  assert hash(solvers.ActiveSet()) == hash(solvers.ActiveSet())
  assert solvers.resolve("auto") == solvers.ActiveSet()
  assert solvers.resolve("auto", differentiation="unroll") == solvers.APG()
  assert solvers.resolve("auto", loss="l1") == solvers.PDHG()


@pytest.mark.parametrize("solver", [s for s in SOLVERS if s.compacts],
                         ids=lambda s: type(s).__name__)
def test_compaction_of_slow_samples_changes_no_code(solver):
  """The driver moves the last running quarter of a block into a smaller block; each
  sample's iterations, and so its code, are those of the uncompacted loop."""
  uncompacted = type("Uncompacted", (type(solver),), {"compacts": False})()
  W, V = ill_conditioned(8, 1e4, n=600)  # iteration counts spread over samples: a tail
  G, C = jnp.asarray(W.T @ W), jnp.asarray(V @ W)
  out = solvers.solve(solver, solvers.QuadraticProblem(G, C, jnp.asarray(0.0)))
  ref = solvers.solve(uncompacted, solvers.QuadraticProblem(G, C, jnp.asarray(0.0)))
  n_iter = np.asarray(out.n_iter)
  assert np.mean(n_iter > np.quantile(n_iter, 0.75)) > 0  # some samples do run longer
  np.testing.assert_array_equal(n_iter, ref.n_iter)
  np.testing.assert_allclose(out.h, ref.h, rtol=1e-10, atol=1e-12)
  np.testing.assert_array_equal(out.converged, ref.converged)


def test_rank_deficient_gram_is_never_silent():
  """64 atoms of a 4x-pooled MNIST cone in 49 pixels (singular G; tests/data, the samples of
  experiments/reuse.py that gave NaN distances): the active set's pivoting overflowed to
  NaN while reporting converged. The driver re-solves such rows by APG and reports them as
  not converged; "auto" takes ADMM when there are more atoms than features."""
  import pathlib
  case = np.load(pathlib.Path(__file__).with_name("data") / "rank_deficient_nnls.npz")
  W, V = case["W"], case["V"]
  with pytest.warns(conejax.ConvergenceWarning):
    out = conejax.nnls(W, V, solver=solvers.ActiveSet())
  h, converged = np.asarray(out.h), np.asarray(out.converged)
  assert np.all(np.isfinite(h)) and not np.all(converged)
  assert np.all(np.isfinite(np.asarray(out.residual)))
  assert type(solvers.resolve("auto", n_atoms=64, n_features=49)).__name__ == "ADMM"
  auto = conejax.nnls(W, V, solver=solvers.ADMM(max_iter=20000, tol=1e-7))
  objective = lambda h: 0.5 * np.sum((np.asarray(h, np.float64) @ W.T - V) ** 2, axis=1)
  # Rows the active set finished are exact; the fallback rows are APG-close.
  gap = (objective(h) - objective(auto.h)) / objective(auto.h)
  assert np.all(gap[converged] < 1e-4) and np.all(gap < 0.05)
