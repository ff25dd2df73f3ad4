"""PDHG: sparse non-negative least absolute deviations by restarted primal-dual iterations.

Solves, for every sample v (a row of V, shape (k,)) and a dictionary B of shape (k, d)
whose columns are the atoms (in use B = A W, an operator applied to a dictionary, formed
as a matrix),

    h*(v) = argmin_{h >= 0}  ||B h - v||_1 + mu * sum(h),

the robust counterpart of ``nnls`` for impulsive (salt-and-pepper) noise. It is the saddle
point problem min_{h >= 0} max_{|y|_inf <= 1} <B h - v, y> + mu sum(h), whose dual is

    max_y  -<y, v>   s.t.  |y|_inf <= 1  and  B^T y + mu >= 0.

The solver is the primal-dual hybrid gradient method of Chambolle and Pock (theta = 1),
taken as an operator T on z = (h, y):

    y+ = clip(y + sigma (B h - v), -1, 1)           (prox of sigma F*, F = ||. - v||_1)
    h+ = max(h - tau (B^T (2 y+ - y) + mu), 0)      (prox of tau (mu sum + h >= 0))

and iterated in the restarted, reflected Halpern form of Lu and Yang (r2HPDHG):
z <- (k + 1) / (k + 2) (2 T(z) - z) + 1 / (k + 2) z_anchor after k steps since the last
restart, with z and the anchor reset to T(z) when the fixed-point residual ||z - T(z)||
falls by 0.2 (or by 0.8 and stops falling, or after 0.36 of all steps), and the PDLP
primal weight update at each restart (kept within 100x of its start). B h and B^T y are
carried along linearly, so a step costs two matrix products, as a plain one does.

The steps are the diagonal preconditioning of Pock and Chambolle with alpha = 1,
tau_j = w / sum_i |B_ij| and sigma_i = 1 / (w sum_j |B_ij|), which satisfies
||sigma^1/2 B tau^1/2||_2 <= 1 for any B; ``precondition=False`` takes scalar steps w / L
and 1 / (w L) with L = ||B||_2. The primal weight starts at w = ||v||_1 / sum_ij |B_ij|,
the size of a typical code, so the iterates are equivariant to rescaling v, B or mu.

Measured on CPU (500 MNIST test digits / 255 with 30% of pixels set to 0 or 1, B a 784 x 64
NMF dictionary of 2000 training digits, mu = 0, float32, tol 1e-4, max_iter 5000), as
median / 90th percentile / largest iteration count:

    restarted Halpern, diagonal steps (default)   280 /  847 / 3108   all converged
    restarted Halpern, scalar steps               827 / 2178 / 5000   98.4% converged
    plain Chambolle-Pock, diagonal steps          870 / 1893 / 5000   99.2% converged
    plain Chambolle-Pock, scalar steps           1324 / 2185 / 5000   99.4% converged

A restarted step costs about 1.3x a plain one (more carried arrays), so the default was
also the fastest in wall time (23 s against 27-38 s on a shared 2-core machine). The L1
fit W h* of the corrupted digits has PSNR 16.9 dB against the clean digits, the L2 fit
(``nnls``) 15.2 dB and the corrupted digits 8.4 dB. Float32 reaches 1e-4 but its
largest iteration counts are PDHG's known slow tail on degenerate linear programs; in
float64, 1e-7 takes about 1500 iterations (median) on 40 x 10 random problems.

The stopping measure, checked at every T(z), is

    error = |P(h) + <y, v>| / ||v||_1 + 2 max_j max(-(B^T y + mu)_j, 0) / sum_i |B_ij|,

the duality gap plus the dual infeasibility, both scale-free. For non-negative B it bounds
the relative suboptimality (P(h) - P(h*)) / ||v||_1, since ||B h*||_1 <= 2 ||v||_1.

Samples are rows: a step treats the batch as two matrix products (y @ B, h @ B^T); a
converged sample is frozen (by the step itself and by the driver), so its result does not
depend on the rest of its batch. Gradients are not provided.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from conejax.solvers import _protocol
from conejax.solvers._protocol import L1Problem

_HIGHEST = lax.Precision.HIGHEST
# Restart rule of r2HPDHG / PDLP: restart when the fixed-point residual fell by a factor
# 0.2, or by 0.8 and rose since the last step, or after 0.36 of all steps so far.
_SUFFICIENT, _NECESSARY, _ARTIFICIAL = 0.2, 0.8, 0.36
# The primal weight stays within this factor of its start: unclamped, it ran away (to 1e-6)
# on some MNIST samples, whose degenerate duals keep moving after the codes have settled.
_WEIGHT_RANGE = 100.0


class L1State(NamedTuple):
  """State of the restarted Halpern PDHG iteration for a batch of samples.

  Batch axes (...) are leading: a single sample has ``h`` of shape (d,) and scalar
  per-sample fields. Every field is an array, so the state crosses ``jit`` and ``vmap``.

  Attributes:
    h: (..., d) the latest PDHG output T(z), always >= 0: the solution estimate.
    y: (..., k) its dual, always in [-1, 1]: a dual certificate once converged.
    error: (...) scale-free duality gap plus dual infeasibility at (h, y).
    h_z, y_z: (..., d) and (..., k), the Halpern iterate z, the input of the next T.
    Bh_z, Bty_z: (..., k) and (..., d), B h_z and B^T y_z.
    h_anchor, y_anchor, Bh_anchor, Bty_anchor: the same at the last restart point.
    weight: (...) primal weight: the steps are tau * weight and sigma / weight.
    weight0: (...) the starting primal weight ||v||_1 / sum_ij |B_ij|.
    count: (...) int32 steps since the last restart.
    iter_num: (...) int32 steps taken while the sample was not yet converged.
    residual_anchor: (...) fixed-point residual ||z - T(z)|| at the last restart.
    residual_last: (...) fixed-point residual at the last step.
    scale: (...) ||v||_1, the normaliser of the gap.
  """
  h: jax.Array
  y: jax.Array
  error: jax.Array
  h_z: jax.Array
  y_z: jax.Array
  Bh_z: jax.Array
  Bty_z: jax.Array
  h_anchor: jax.Array
  y_anchor: jax.Array
  Bh_anchor: jax.Array
  Bty_anchor: jax.Array
  weight: jax.Array
  weight0: jax.Array
  count: jax.Array
  iter_num: jax.Array
  residual_anchor: jax.Array
  residual_last: jax.Array
  scale: jax.Array


class PDHGAux(NamedTuple):
  """What every chunk shares.

  Attributes:
    tau: (d,) primal step sizes before the weight.
    sigma: (k,) dual step sizes before the weight.
    col_scale: (d,) column sums sum_i |B_ij|, the normaliser of the dual infeasibility.
  """
  tau: jax.Array
  sigma: jax.Array
  col_scale: jax.Array


def default_tol(dtype) -> float:
  """The default tolerance on ``error``: 1e-4 in float32, 1e-7 in float64."""
  return 1e-7 if jnp.finfo(dtype).bits >= 64 else 1e-4


def _positive(s):
  # Zero sums (empty rows or columns of B) take the largest sum, or 1 when B is zero.
  s = jnp.where(s > 0, s, jnp.max(s))
  return jnp.where(s > 0, s, jnp.ones_like(s))


def step_sizes(B: jax.Array, *, precondition: bool = True):
  """Step sizes (tau (d,), sigma (k,)) for B (k, d), before the primal weight.

  Diagonal (Pock and Chambolle, alpha = 1): tau_j = 1 / sum_i |B_ij| and sigma_i =
  1 / sum_j |B_ij|, an empty column taking the largest sum. Scalar: 1 / ||B||_2 for both.
  Either way ||sigma^1/2 B tau^1/2||_2 <= 1. An all-zero row of B gets sigma_i = 0: its dual
  is decoupled and ``init`` puts it at its optimum -sign(v_i); left free, it would swamp
  the distances that set the primal weight (the empty border pixels of MNIST atoms do).
  """
  absB = jnp.abs(B)
  rows = jnp.sum(absB, axis=1)
  if precondition:
    tau, sigma = 1 / _positive(jnp.sum(absB, axis=0)), 1 / _positive(rows)
  else:
    gram = jnp.dot(B.T, B, precision=_HIGHEST)
    norm = jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(gram)[-1], jnp.finfo(B.dtype).tiny))
    tau = jnp.full(B.shape[1:], 1 / norm, B.dtype)
    sigma = jnp.full(B.shape[:1], 1 / norm, B.dtype)
  return tau, jnp.where(rows > 0, sigma, 0)


def _lead(x, batch_ndim):
  """Prepends unit axes to a constant (d,) or (k,) array (rank promotion is strict)."""
  return x.reshape((1,) * batch_ndim + x.shape)


def _error(h, Bh, y, Bty, V, mu, scale, col_scale):
  gap = jnp.sum(jnp.abs(Bh - V), axis=-1) + mu * jnp.sum(h, axis=-1) + jnp.sum(y * V, axis=-1)
  infeasible = jnp.maximum(-(Bty + mu), 0) / _lead(col_scale, h.ndim - 1)
  return jnp.abs(gap) / scale + 2 * jnp.max(infeasible, axis=-1)


def _pick(cond, new, old):
  """Per sample: ``new`` where ``cond`` (...) holds, else ``old`` ((...) or (..., x))."""
  return jnp.where(cond.reshape(cond.shape + (1,) * (new.ndim - cond.ndim)), new, old)


@dataclasses.dataclass(frozen=True)
class PDHG(_protocol.AbstractSolver):
  """Restarted Halpern PDHG for the L1 problem (``nnls_l1``).

  Attributes:
    max_iter: iteration cap per sample.
    tol: tolerance on the scale-free duality gap plus dual infeasibility; None is 1e-4
      (float32) or 1e-7 (float64).
    precondition: diagonal steps of Pock and Chambolle (True) or scalar steps from
      ||B||_2 (False).
  """
  max_iter: int = 5000
  tol: float | None = None
  precondition: bool = True
  problem_type = L1Problem
  supports_implicit = False

  def __post_init__(self):
    self.validate_settings()
    object.__setattr__(self, "precondition", bool(self.precondition))

  def default_tol(self, dtype) -> float:
    return default_tol(dtype)

  def prepare(self, problem: L1Problem) -> PDHGAux:
    B = problem.B
    tau, sigma = step_sizes(B, precondition=self.precondition)
    return PDHGAux(tau, sigma, _positive(jnp.sum(jnp.abs(B), axis=0)))

  def init(self, problem: L1Problem, aux: PDHGAux, h0) -> L1State:
    """The state at h = h0 (clipped at 0) and y = 0 (-sign(v) on empty rows of B)."""
    B, V, mu = problem
    batch = V.shape[:-1]
    h = jnp.maximum(h0, 0)
    Bh = jnp.matmul(h, B.T, precision=_HIGHEST)
    y = jnp.where(_lead(aux.sigma == 0, len(batch)), -jnp.sign(V), 0).astype(V.dtype)
    Bty = jnp.zeros_like(h)  # empty rows add nothing to B^T y
    total = jnp.sum(jnp.abs(B))
    weight = jnp.sum(jnp.abs(V), axis=-1) / jnp.where(total > 0, total, 1)
    weight = jnp.where(weight > 0, weight, jnp.ones_like(weight))
    scale = jnp.maximum(jnp.sum(jnp.abs(V), axis=-1), jnp.finfo(V.dtype).tiny)
    error = _error(h, Bh, y, Bty, V, mu, scale, aux.col_scale)
    zero, inf = jnp.zeros(batch, jnp.int32), jnp.full(batch, jnp.inf, V.dtype)
    return L1State(h, y, error, h, y, Bh, Bty, h, y, Bh, Bty, weight, weight, zero, zero, inf,
                   inf, scale)

  def step(self, problem: L1Problem, aux: PDHGAux, state: L1State) -> L1State:
    """One restarted Halpern PDHG step for every sample: two matrix products with B.

    Samples whose ``error`` is already <= tol are left as they are; a sample whose new
    ``error`` is <= tol restarts at its certified point, so ``h_z == h`` for it.
    """
    B, V, mu = problem
    tol = self.stopping_tol(V.dtype)
    batch_ndim = V.ndim - 1
    weight = state.weight[..., None]
    tau, sigma = weight * _lead(aux.tau, batch_ndim), _lead(aux.sigma, batch_ndim) / weight
    inv_sigma = weight * _lead(jnp.where(aux.sigma > 0, 1 / aux.sigma, 0), batch_ndim)
    # T(z): a dual step, then a primal step at the extrapolated dual 2 y+ - y.
    y = jnp.clip(state.y_z + sigma * (state.Bh_z - V), -1, 1)
    Bty = jnp.matmul(y, B, precision=_HIGHEST)
    h = jnp.maximum(state.h_z - tau * (2 * Bty - state.Bty_z + mu), 0)
    Bh = jnp.matmul(h, B.T, precision=_HIGHEST)
    error = _error(h, Bh, y, Bty, V, mu, state.scale, aux.col_scale)
    # ||z - T(z)|| in the PDHG metric [[1 / tau, -B^T], [-B, 1 / sigma]].
    dh, dy = state.h_z - h, state.y_z - y
    residual = jnp.sqrt(jnp.maximum(
        jnp.sum(dh**2 / tau, axis=-1) + jnp.sum(dy**2 * inv_sigma, axis=-1)
        - 2 * jnp.sum(dy * (state.Bh_z - Bh), axis=-1), 0))
    # Restart at T(z) when the residual fell enough, or stopped falling, or long after the
    # last restart, or once converged.
    active = state.error > tol
    count = state.count + 1
    restart = active & (
        (error <= tol) | (residual <= _SUFFICIENT * state.residual_anchor)
        | (residual <= _NECESSARY * state.residual_anchor) & (residual > state.residual_last)
        | (count >= _ARTIFICIAL * (state.iter_num + 1)))
    # Otherwise a reflected Halpern step towards the anchor; B h and B^T y follow linearly.
    lam = (count / (count + 1)).astype(h.dtype)[..., None]
    def next_z(t, z, anchor):
      return _pick(restart, t, _pick(active, lam * (2 * t - z) + (1 - lam) * anchor, z))
    # At a restart the primal weight moves halfway (in log) to the ratio of the distances
    # from the last restart point, measured in the preconditioned metrics (PDLP).
    moved_h = jnp.sum((h - state.h_anchor)**2 / tau, axis=-1)
    moved_y = jnp.sum((y - state.y_anchor)**2 * inv_sigma, axis=-1)
    moved = restart & (moved_h > 0) & (moved_y > 0)
    ratio = jnp.where(moved, jnp.sqrt(jnp.sqrt(moved_h / jnp.where(moved, moved_y, 1))), 1)
    return state._replace(
        h=_pick(active, h, state.h), y=_pick(active, y, state.y),
        error=_pick(active, error, state.error),
        h_z=next_z(h, state.h_z, state.h_anchor), y_z=next_z(y, state.y_z, state.y_anchor),
        Bh_z=next_z(Bh, state.Bh_z, state.Bh_anchor),
        Bty_z=next_z(Bty, state.Bty_z, state.Bty_anchor),
        h_anchor=_pick(restart, h, state.h_anchor), y_anchor=_pick(restart, y, state.y_anchor),
        Bh_anchor=_pick(restart, Bh, state.Bh_anchor),
        Bty_anchor=_pick(restart, Bty, state.Bty_anchor),
        weight=jnp.clip(state.weight * ratio, state.weight0 / _WEIGHT_RANGE,
                        state.weight0 * _WEIGHT_RANGE),
        count=jnp.where(restart, 0, jnp.where(active, count, state.count)),
        iter_num=state.iter_num + active,
        residual_anchor=_pick(restart, residual, state.residual_anchor),
        residual_last=_pick(active, residual, state.residual_last))
