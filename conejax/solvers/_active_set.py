"""Exact sparse NNLS by block principal pivoting (Kim and Park 2011), batched for jit.

For argmin_{h >= 0} 0.5 h^T G h - q'^T h with q = c - mu, a partition of the variables into
a passive set F and an active set A = F^c gives x_F = G_FF^{-1} q_F, x_A = 0 and the
gradient y = G x - q. The partition is optimal when x_F >= 0 and y_A >= 0 (the KKT
conditions); block principal pivoting exchanges every infeasible variable at once (x_i < 0
leaves F, y_i < 0 joins it) while that lowers their count, and falls back to Murty's rule
(exchange only the infeasible variable of largest index) after ``backup`` exchanges that
did not, which guarantees termination. Each sample keeps its own partition, counters and
solution, and stops as soon as it is feasible.

The passive set starts from ``warm_start`` APG iterations (the support of the iterate), so
it is small from the start on sparse problems (at most 9 of 64 variables for MNIST digits on
k-means class cones); the systems G_FF are gathered into small batched systems
(``_linalg.solve_on_support``: a Cholesky, or for supports above 16 conjugate gradients run
to a residual at rounding level). The answer is exact to rounding in float32 and float64:
the only inexactness is the backward error of those solves of G_FF (a Cholesky pivot below
10 eps max diag(G), a singular G_FF as in unions of cones, is replaced by that ridge).

Signs are tested against rounding: x_i < 0 and y_i < -t with t = 16 eps (||q||_inf +
max diag(G) ||x||_1), an entrywise bound on the rounding error of G x - q.

References:
  Kim and Park, Fast nonnegative matrix factorization: an active-set-like method and
  comparisons, SIAM J. Sci. Comput. 2011. Portugal, Judice and Vicente, A comparison of
  block pivoting and interior-point algorithms for linear least squares problems with
  nonnegative variables, Math. Comp. 1994.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from conejax.solvers import _apg, _linalg, _protocol
from conejax.solvers._protocol import HIGHEST, QuadraticProblem


X_TOLERANCE = 0.0
REFINE_BELOW = 1e-2  # refine when cond(G) > REFINE_BELOW / eps (1.7e5 in float32)


class ActiveSetState(NamedTuple):
  """Block principal pivoting state for n samples.

  Attributes:
    h: (n, d) solution x of the current partition (zero on the active set; may be
      negative on the passive set until feasible).
    grad: (n, d) gradient G x - c + mu.
    passive: (n, d) bool, the passive set F.
    best: (n,) int32 fewest infeasible variables seen (ninf of Kim and Park).
    backup: (n,) int32 full exchanges left before Murty's rule.
    error: (n,) number of infeasible variables of the current partition (0: solved).
  """
  h: jax.Array
  grad: jax.Array
  passive: jax.Array
  best: jax.Array
  backup: jax.Array
  error: jax.Array


class ActiveSetAux(NamedTuple):
  lipschitz: jax.Array
  ridge: jax.Array
  diag: jax.Array
  ill_conditioned: jax.Array


@dataclasses.dataclass(frozen=True)
class ActiveSet(_protocol.AbstractSolver):
  """Block principal pivoting with Murty's backup rule, warm-started by APG.

  Attributes:
    max_iter: cap on pivoting steps per sample (each one solve of G_FF); rarely more than
      a few are needed.
    warm_start: APG iterations that pick the starting passive set.
    backup: full exchanges without progress allowed before Murty's single exchange.
  """
  max_iter: int = 1000
  warm_start: int = 30
  backup: int = 3
  tol = None
  # No compaction of the pivoting tail: each block size compiles the whole pivoting step
  # again (its Cholesky kernels and CG): on MNIST codes 2.5x the compilation (7 -> 19 s;
  # 12 -> 30 s in a slower hour) for 4-20% less run time.
  compacts = False

  def __post_init__(self):
    self.validate_settings("backup")
    if isinstance(self.warm_start, bool) or not isinstance(self.warm_start, int) or (
        self.warm_start < 0):
      raise ValueError(f"warm_start must be an integer >= 0; got {self.warm_start!r}.")

  def default_tol(self, dtype) -> float:
    return 0.0  # stop when no variable is infeasible

  def prepare(self, problem: QuadraticProblem) -> ActiveSetAux:
    G = problem.G
    eigenvalues = jnp.linalg.eigvalsh(G)
    top = jnp.maximum(eigenvalues[-1], jnp.finfo(G.dtype).tiny)
    # Below float64, a system this ill-conditioned is refined in float64 (``solution``).
    ill = eigenvalues[0] < top * jnp.finfo(G.dtype).eps / REFINE_BELOW
    return ActiveSetAux(top, _linalg.default_ridge(G), jnp.max(jnp.diag(G)), ill)

  def solution(self, problem: QuadraticProblem, aux: ActiveSetAux, state: ActiveSetState):
    """max(x, 0); for an ill-conditioned G below float64, pivoting finished in float64.

    In float32 the gradient G x - q itself carries a rounding error of eps ||G|| ||x||,
    which costs up to eps^2 cond(G) ||x||^2 in objective (2e-5 relative measured at cond
    1e8) and can mislead the last sign tests. When ``jax_enable_x64`` is on, pivoting
    resumes in float64 from the float32 partition (usually one solve) and the answer is
    rounded back; well-conditioned problems skip the pivoting (its loop runs while cond(G) >
    REFINE_BELOW / eps), so it costs them almost nothing.
    """
    x = state.h
    wide = jnp.promote_types(x.dtype, jnp.float64)
    if wide == x.dtype or not jax.config.jax_enable_x64:
      return jnp.maximum(x, 0)

    def refine(x):
      # Pivoting resumed in float64 from the float32 partition: usually one solve.
      wide_problem = QuadraticProblem(problem.G.astype(wide), problem.C.astype(wide),
                                      jnp.asarray(problem.mu, wide))
      wide_aux = ActiveSetAux(aux.lipschitz.astype(wide), _linalg.default_ridge(
          wide_problem.G), aux.diag.astype(wide), aux.ill_conditioned)
      start = self._start(wide_problem, wide_aux, state.passive)

      def cond(carry):
        it, st = carry
        return (it < self.max_iter) & aux.ill_conditioned & jnp.any(st.error > 0)

      def body(carry):
        it, st = carry
        new = self._step(wide_problem, wide_aux, st, one_size=True)
        return it + 1, _protocol.tree_select(st.error > 0, new, st)

      final = lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), start))[1]
      return final.h.astype(x.dtype)

    # A where, not lax.cond: a cond holding while loops and LAPACK calls deadlocked
    # XLA:CPU under vmap (jax 0.10.2); the loop above runs zero times when not needed.
    return jnp.maximum(jnp.where(aux.ill_conditioned, refine(x), x), 0)

  def _partition(self, problem, aux, passive, rows, x, one_size):
    """x and the gradient for the partition ``passive``, re-solved on ``rows`` only."""
    q = problem.C - problem.mu
    x = _linalg.solve_on_support(problem.G, q, passive, aux.ridge, rows=rows, out=x,
                                 one_size=one_size)
    grad = jnp.matmul(x, problem.G, precision=HIGHEST) - q
    return x, grad

  def _infeasible(self, problem, aux, x, grad, passive):
    eps = jnp.finfo(x.dtype).eps
    q_scale = jnp.max(jnp.abs(problem.C - problem.mu), axis=-1)
    threshold = 16 * eps * (q_scale + aux.diag * jnp.sum(jnp.abs(x), axis=-1))
    x_threshold = X_TOLERANCE * jnp.sqrt(eps) * jnp.max(jnp.abs(x), axis=-1)
    return jnp.where(passive, x < -x_threshold[:, None], grad < -threshold[:, None])

  def init(self, problem: QuadraticProblem, aux: ActiveSetAux, h0) -> ActiveSetState:
    h = jnp.maximum(h0, 0)
    if self.warm_start:
      h = _apg.iterate(problem, aux.lipschitz, h, self.warm_start)
    return self._start(problem, aux, h > 0)

  def _start(self, problem, aux, passive) -> ActiveSetState:
    """The state before the first solve: ``step`` solves this partition without exchanging
    (``best`` is then d + 2, above any count), so every solve is traced once, in ``step``."""
    d = problem.C.shape[-1]
    n = problem.C.shape[:-1]
    x = jnp.zeros_like(problem.C)
    return ActiveSetState(x, jnp.zeros_like(x), passive, jnp.full(n, d + 2, jnp.int32),
                          jnp.full(n, self.backup, jnp.int32), jnp.full(n, d + 1, x.dtype))

  def step(self, problem: QuadraticProblem, aux: ActiveSetAux,
           state: ActiveSetState) -> ActiveSetState:
    return self._step(problem, aux, state, one_size=False)

  def _step(self, problem, aux, state, *, one_size):
    """``step``; ``one_size``: every system at full size (``solve_on_support``), for the
    float64 refinement, which is rare and would otherwise double the compiled program."""
    d = state.h.shape[-1]
    fresh = state.best > d + 1           # the starting partition, not yet solved
    infeasible = self._infeasible(problem, aux, state.h, state.grad, state.passive)
    infeasible = infeasible & ~fresh[:, None]
    count = jnp.sum(infeasible, axis=-1).astype(jnp.int32)
    better = count < state.best
    full = better | (state.backup >= 1)
    best = jnp.where(fresh, d + 1, jnp.where(better, count, state.best))
    backup = jnp.where(better | fresh, self.backup,
                       jnp.where(full, state.backup - 1, state.backup))
    columns = jnp.arange(d)[None]
    last = jnp.max(jnp.where(infeasible, columns, -1), axis=-1, keepdims=True)
    single = columns == last
    flip = jnp.where(full[:, None], infeasible, single)
    passive = state.passive ^ flip
    # Only unfinished samples are solved (the others are discarded by the driver anyway).
    x, grad = self._partition(problem, aux, passive, state.error > 0, state.h, one_size)
    error = jnp.sum(self._infeasible(problem, aux, x, grad, passive), axis=-1)
    return ActiveSetState(x, grad, passive, best, backup, error.astype(x.dtype))
