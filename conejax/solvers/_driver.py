"""The one driver of every NNLS solver: chunks, the loop, freezing, result, gradients.

``solve(solver, problem, h0)`` cuts the samples into chunks of ``batch_size`` rows (one
``lax.map`` step each, so the working set stays in cache), runs each chunk until all of its
samples meet the solver's stopping test or ``max_iter``, and freezes every sample as soon as
it has converged: its state no longer changes, so its result is the one it would get
alone, whatever the rest of its batch. Differentiation is applied here, once for every
solver:

- "implicit": a ``custom_vjp`` differentiates the KKT conditions at the solution,
  G_SS h_S = c_S - mu on the support S = {h > 0}: one solve of G_SS z_S = hbar_S per sample,
  gathered to the size of the support (``_linalg``) and chunked like the forward pass, so
  memory stays bounded (never a (n, d, d) array). Needs a Gram matrix (not a function).
- "unroll": exactly ``solver.max_iter`` steps in a ``fori_loop``, reverse mode through
  each (the derivative of the truncated iteration); for solvers with ``supports_unroll``.

Non-finite inputs propagate, also under ``jit``: a sample whose c (or v) holds a NaN or an
infinity gets NaN codes and residual and ``converged=False``, and a non-finite G, B or mu
makes every sample NaN.

A path that cannot be differentiated (the L1 problem, matrix-free G under "implicit",
``ActiveSet`` under "unroll") raises a ``ValueError`` naming the alternative when ``grad``
reaches it, not JAX's while_loop error.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from conejax import _loops
from conejax.solvers import _apg, _linalg, _protocol
from conejax.solvers._protocol import (L1Problem, NNLSResult, QuadraticProblem, gram_times,
                                       kkt_residual, kkt_scale, tree_select)

DIFFERENTIATIONS = ("implicit", "unroll")


COMPACT_FRACTION = 4   # compact when at most 1/4 of a block's samples are still running
COMPACT_MIN = 64       # ... into blocks of no fewer rows than this


def _run_loop(solver, problem, aux, h0, tol):
  """The while loop for one chunk: (h, n_iter, error) with converged samples frozen.

  For solvers that allow it (``compacts``), once at most 1/COMPACT_FRACTION of the block's
  samples still run, they are gathered into a block that much smaller and the loop goes on
  there (recursively, down to COMPACT_MIN rows), so a few slow samples do not keep the
  whole chunk stepping; each sample's iterations are unchanged.
  """
  quadratic = isinstance(problem, QuadraticProblem)
  n = problem.C.shape[0] if quadratic else problem.V.shape[0]
  state = solver.init(problem, aux, h0)
  error = solver.residual(problem, aux, state)
  carry = (jnp.zeros((), jnp.int32), state, error, jnp.zeros((n,), jnp.int32))
  compacts = solver.compacts and not (quadratic and problem.matrix_free)
  _, state, error, n_iter = _loop(solver, problem, aux, tol, carry, compacts)
  return solver.solution(problem, aux, state), n_iter, error


def _loop(solver, problem, aux, tol, carry, compacts):
  """Runs ``carry`` = (it, state, error, n_iter) of one block to the end (see _run_loop)."""
  every, max_iter = solver.check_every, solver.max_iter
  n = carry[2].shape[0]
  small = n // COMPACT_FRACTION
  compacts = compacts and small >= COMPACT_MIN

  def cond(carry):
    it, _, error, _ = carry
    running = error > tol
    go = (it < max_iter) & jnp.any(running)
    return go & (jnp.sum(running) > small) if compacts else go

  def body(carry):
    it, state, error, n_iter = carry
    k = jnp.minimum(every, max_iter - it)
    if every == 1:
      new = solver.step(problem, aux, state)
    else:
      new = lax.fori_loop(0, k, lambda _, s: solver.step(problem, aux, s), state)
    new_error = solver.residual(problem, aux, new)
    active = error > tol
    return (it + k, tree_select(active, new, state), jnp.where(active, new_error, error),
            n_iter + jnp.where(active, k, 0).astype(jnp.int32))

  carry = lax.while_loop(cond, body, carry)
  if not compacts:
    return carry
  it, state, error, n_iter = carry
  # At most ``small`` samples still run: gather them (padding rows point past the end,
  # read row 0 with error 0 so they never step, and are dropped on the way back).
  rows, valid = _linalg.gather_indices(error > tol, small)
  rows = jnp.where(valid, rows, n)
  read = jnp.minimum(rows, n - 1)
  take = lambda x: x[read]
  sub_problem = (problem._replace(C=problem.C[read]) if isinstance(problem, QuadraticProblem)
                 else problem._replace(V=problem.V[read]))
  sub = (it, jax.tree.map(take, state), jnp.where(valid, error[read], 0), n_iter[read])
  it, sub_state, sub_error, sub_iter = _loop(solver, sub_problem, aux, tol, sub, compacts)
  put = lambda full, part: full.at[rows].set(part, mode="drop")
  return (it, jax.tree.map(put, state, sub_state), put(error, sub_error),
          put(n_iter, sub_iter))


def _run_unrolled(solver, problem, aux, h0):
  state = solver.init(problem, aux, h0)
  state = lax.fori_loop(0, solver.max_iter, lambda _, s: solver.step(problem, aux, s), state)
  n = h0.shape[0]
  return (solver.solution(problem, aux, state), jnp.full((n,), solver.max_iter, jnp.int32),
          solver.residual(problem, aux, state))


def _final_residual(solver, problem, aux, h):
  """The KKT residual at the returned codes (quadratic problems), or the solver's own."""
  lipschitz = solver.kkt_lipschitz(problem, aux)
  grad = gram_times(problem.G, h) - problem.C + problem.mu
  return kkt_residual(h, grad, lipschitz, kkt_scale(problem.C))


FALLBACK_STEPS = 2000


def _chunked(solver, problem, aux, H0, tol, batch_size, unroll):
  """Runs every chunk of C (or V) and h0 through the loop; G, B and mu are shared."""
  quadratic = isinstance(problem, QuadraticProblem)
  rows = problem.C if quadratic else problem.V
  shared = [problem.mu] + ([] if quadratic and problem.matrix_free else
                           [problem.G if quadratic else problem.B])
  shared_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in shared]))

  per_sample = quadratic and problem.matrix_free

  def one(args):
    part, h0 = args
    if part.shape[0] == 1 and not per_sample:
      # XLA:CPU computes a lone row's products (h G) as matrix-vector products, which round
      # differently from a batch's matrix products: solved as two copies, a sample's code
      # is bitwise its code in any batch (float32 codes differed by up to 2e-5 before).
      two = one((jnp.concatenate([part, part]), jnp.concatenate([h0, h0])))
      return tuple(x[:1] for x in two)
    sub = problem._replace(C=part) if quadratic else problem._replace(V=part)
    if unroll:
      h, n_iter, error = _run_unrolled(solver, sub, aux, h0)
    else:
      h, n_iter, error = _run_loop(solver, sub, aux, h0, tol)
    residual = _final_residual(solver, sub, aux, h) if quadratic else error
    return h, n_iter, error, residual

  if per_sample:
    h, n_iter, error, residual = one((rows, H0))  # per-sample operators: no chunking
  else:
    h, n_iter, error, residual = _loops.in_chunks(one, (rows, H0), batch_size)
  # A sample with a non-finite input gets NaN codes, never a plausible number (its solve
  # may otherwise stop at h = 0 with every test of a NaN false).
  finite = jnp.all(jnp.isfinite(rows), axis=-1) & shared_finite
  if quadratic and not unroll:  # (unrolled: APG iterations, differentiated; no loop here)
    # Finite input but a non-finite answer (the active set's pivoting on a rank-deficient
    # G, e.g. 64 atoms pooled to 49 pixels, can overflow): re-solved by FALLBACK_STEPS APG
    # steps and reported as not converged, its KKT residual saying how close it is. The
    # loop runs once or never (no lax.cond: see _linalg on XLA:CPU deadlocks). Its APG
    # steps must start from the carry: from a constant they are loop-invariant, and XLA
    # hoists them out of the loop and runs them always (10000 MNIST digits on 784 x 64
    # atoms took 2.1 s instead of 0.2 s).
    broken = finite & ~jnp.all(jnp.isfinite(h), axis=-1)

    def fallback(carry):
      _, h, residual = carry
      lipschitz = solver.kkt_lipschitz(problem, aux)
      start = jnp.where(broken[:, None] | ~jnp.isfinite(h), 0, h)  # the rest: their answer
      again = _apg.iterate(problem, lipschitz, start, FALLBACK_STEPS)
      fixed = _final_residual(solver, problem, aux, again)
      return (True, jnp.where(broken[:, None], again, h),
              jnp.where(broken, fixed, residual))

    h, residual = lax.while_loop(lambda c: ~c[0] & jnp.any(broken), fallback,
                                 (False, h, residual))[1:]
    error = jnp.where(broken, jnp.inf, error)
  h = jnp.where(finite[:, None], h, jnp.nan)
  return h, n_iter, jnp.where(finite, residual, jnp.nan), (error <= tol) & finite


def _not_differentiable(message):
  """guard(h, inputs) = h, whose vjp raises ``message``: ``inputs`` are the problem's
  arrays before ``stop_gradient``, so a gradient with respect to them reaches it."""
  @jax.custom_vjp
  def guard(h, inputs):
    return h

  def fwd(h, inputs):
    return h, None

  def bwd(_, g):
    raise ValueError(message)

  guard.defvjp(fwd, bwd)
  return guard


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _implicit(solver, tol, batch_size, G, C, mu, H0, aux):
  problem = QuadraticProblem(G, C, mu)
  return _chunked(solver, problem, aux, H0, tol, batch_size, unroll=False)


def _implicit_fwd(solver, tol, batch_size, G, C, mu, H0, aux):
  out = _implicit(solver, tol, batch_size, G, C, mu, H0, aux)
  return out, (G, out[0], mu, H0, aux)


def _implicit_bwd(solver, tol, batch_size, residuals, cotangents):
  """G_SS z_S = hbar_S on S = {h > 0}: cbar = z, Gbar = -z h^T, mubar = -sum(z)."""
  G, h, mu, H0, aux = residuals
  h_bar = cotangents[0]
  support = h > 0
  z = _loops.in_chunks(lambda a: _linalg.solve_on_support(G, a[0] * a[1], a[1]),
                       (h_bar, support), batch_size)
  G_bar = -jnp.einsum("bi,bj->ij", z, h, precision=_protocol.HIGHEST)
  mu_bar = jnp.reshape(-jnp.sum(z), jnp.shape(mu)).astype(jnp.result_type(mu))
  return (G_bar, z, mu_bar, jnp.zeros_like(H0),
          jax.tree.map(jnp.zeros_like, aux))


_implicit.defvjp(_implicit_fwd, _implicit_bwd)


def _check_shapes(problem, quadratic):
  """Static shape checks, so a wrong problem fails here and not deep inside a solver."""
  if quadratic:
    C = problem.C
    if jnp.ndim(C) != 2:
      raise ValueError(f"C must have shape (n, d), samples as rows; got {jnp.shape(C)}.")
    if not problem.matrix_free and jnp.shape(problem.G) != (C.shape[1], C.shape[1]):
      raise ValueError(f"G must have shape (d, d) = {(C.shape[1],) * 2} for C of shape "
                       f"{C.shape}; got {jnp.shape(problem.G)}.")
  else:
    B, V = problem.B, problem.V
    if jnp.ndim(B) != 2 or jnp.ndim(V) != 2 or V.shape[1] != B.shape[0]:
      raise ValueError(f"B must have shape (k, d) and V (n, k) with the same k; got B "
                       f"{jnp.shape(B)} and V {jnp.shape(V)}. Samples are rows.")
  if jnp.ndim(problem.mu) != 0:
    raise ValueError(f"mu must be a scalar; got shape {jnp.shape(problem.mu)}.")


def solve(solver, problem, h0=None, *, batch_size: int = 2048,
          differentiation: str = "implicit") -> NNLSResult:
  """Solves every sample of ``problem`` with ``solver``; traceable (call it inside jit).

  Args:
    solver: a solver object (``APG``, ``ADMM``, ``ActiveSet``, ``PDHG``).
    problem: ``QuadraticProblem`` (C of shape (n, d)) or ``L1Problem`` (V (n, k)).
    h0: optional (n, d) warm start (clipped at 0); zeros by default.
    batch_size: samples per chunk.
    differentiation: "implicit" or "unroll" (see the module docstring).

  Returns:
    ``NNLSResult`` with h (n, d), n_iter (n,), residual (n,) and converged (n,).
  """
  if not isinstance(problem, solver.problem_type):
    raise ValueError(f"{type(solver).__name__} solves {solver.problem_type.__name__}; got "
                     f"{type(problem).__name__}.")
  if differentiation not in DIFFERENTIATIONS:
    raise ValueError(f"differentiation must be one of {DIFFERENTIATIONS}; got "
                     f"{differentiation!r}.")
  quadratic = isinstance(problem, QuadraticProblem)
  rows = problem.C if quadratic else problem.V
  _check_shapes(problem, quadratic)
  d = problem.C.shape[-1] if quadratic else problem.B.shape[-1]
  if h0 is not None and jnp.shape(h0) != rows.shape[:-1] + (d,):
    raise ValueError(f"h0 must have shape {rows.shape[:-1] + (d,)}; got {jnp.shape(h0)}.")
  H0 = jnp.zeros(rows.shape[:-1] + (d,), rows.dtype) if h0 is None else h0
  tol = solver.stopping_tol(rows.dtype)
  name = type(solver).__name__
  if quadratic and problem.matrix_free and not solver.matrix_free_ok:
    raise ValueError(f"{name} needs a Gram matrix; a matrix-free G (one operator per "
                     "sample) is solved by APG.")
  if differentiation == "unroll":
    if not solver.supports_unroll:
      raise ValueError(f"differentiation='unroll' steps the solver's iterations; {name} "
                       "has none to unroll. Use differentiation='implicit', or solver='apg'.")
    aux = solver.prepare(problem)
    h, n_iter, residual, converged = _chunked(solver, problem, aux, H0, tol, batch_size,
                                              unroll=True)
    return NNLSResult(h, n_iter, residual, converged)
  if not quadratic:
    guard = _not_differentiable(
        "the L1 (least absolute deviations) fit is not differentiable in conejax; use the "
        "l2 loss to differentiate through the codes.")
    inputs = tuple(problem)
    problem = jax.tree.map(lax.stop_gradient, problem)
    aux = solver.prepare(problem)
    h, n_iter, residual, converged = _chunked(solver, problem, aux, H0, tol, batch_size,
                                              unroll=False)
    return NNLSResult(guard(h, inputs), n_iter, residual, converged)
  if problem.matrix_free:
    guard = _not_differentiable(
        "differentiation='implicit' needs one Gram matrix for all samples; with one "
        "operator per sample pass differentiation='unroll' to differentiate the iterations.")
    inputs = (problem.C, problem.mu)
    problem = QuadraticProblem(problem.G, lax.stop_gradient(problem.C),
                               lax.stop_gradient(problem.mu),
                               lax.stop_gradient(problem.lipschitz))
    aux = solver.prepare(problem)
    h, n_iter, residual, converged = _chunked(solver, problem, aux, H0, tol, batch_size,
                                              unroll=False)
    return NNLSResult(guard(h, inputs), n_iter, residual, converged)
  aux = solver.prepare(QuadraticProblem(lax.stop_gradient(problem.G), problem.C, problem.mu))
  aux = jax.tree.map(lax.stop_gradient, aux)
  h, n_iter, residual, converged = _implicit(solver, tol, batch_size, problem.G, problem.C,
                                             problem.mu, lax.stop_gradient(H0), aux)
  return NNLSResult(h, n_iter, residual, converged)
