"""Sparse non-negative least squares by ADMM with a cached factorisation.

Solves the problem of ``_nnls`` in its Gram form, for a batch of right-hand sides C (..., d)
sharing one Gram matrix G (d, d),

    h* = argmin_{h >= 0}  0.5 h^T G h - c^T h + mu sum(h),

by splitting h into an unconstrained x and a non-negative z (Boyd et al. 2011, "Distributed
optimization and statistical learning via ADMM", quadratic programming in section 5.2 and
over-relaxation in section 3.4.3), with scaled dual y and penalty rho:

    x <- (G + rho I)^{-1} (c - mu + rho (z - y))
    z <- max(a x + (1 - a) z + y, 0)
    y <- y + a x + (1 - a) z_old - z

(G + rho I)^{-1} is formed once per call (Cholesky), so an iteration costs one product with
a (d, d) matrix, as an accelerated projected-gradient step does. Its convergence depends
far less on the conditioning of G: on blurred or subsampled dictionaries, whose Gram
matrices are singular, it reaches a moderate KKT residual (1e-3, 1e-4) in a fraction of
APG's iterations. Tight tolerances favour APG (measured on the blurred test problem of
``tests/test_nnls_admm.py`` at 1e-8: 11040 ADMM iterations against 8658).
rho is RHO times the largest eigenvalue of G and a = RELAXATION, values that suit every
problem of ``experiments/inverse_problems.py``.

The stopping test is ``_nnls``'s scale-free KKT residual at z, evaluated every CHECK_EVERY
iterations (one extra product with G), so ``tol`` means the same for both solvers. ADMM
converges linearly and its float32 iterates stall near a residual of 1e-6 (rounding in the
x-update), so its default tolerance there is 1e-5; in float64 it is 1e-10, as for APG.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from conejax import _nnls

_HIGHEST = lax.Precision.HIGHEST
RHO = 0.01
RELAXATION = 1.6
CHECK_EVERY = 10


def default_tol(dtype) -> float:
  """The default residual tolerance: 1e-5 in float32, 1e-10 in float64."""
  return 1e-10 if jnp.finfo(dtype).bits >= 64 else 1e-5


class ADMMState(NamedTuple):
  """State of the ADMM iteration for a batch of samples (leading batch axes ...).

  Attributes:
    z: (..., d) current non-negative iterate (the estimate of h*).
    y: (..., d) scaled dual variable.
    iter_num: (...) int32 iterations taken while the sample was not yet converged.
    error: (...) scale-free KKT residual at ``z`` (as ``_nnls``), updated every check.
  """
  z: jax.Array
  y: jax.Array
  iter_num: jax.Array
  error: jax.Array


class Factor(NamedTuple):
  """What every ADMM step needs: M = (G + rho I)^{-1} (d, d), rho and the step size L of
  the KKT residual (the largest eigenvalue of G)."""
  M: jax.Array
  rho: jax.Array
  lipschitz: jax.Array


def factorise(G: jax.Array) -> Factor:
  """(G + rho I)^{-1} by Cholesky, with rho = RHO times the largest eigenvalue of G."""
  lipschitz = _nnls.lipschitz_constant(G)
  rho = RHO * lipschitz
  eye = jnp.eye(G.shape[0], dtype=G.dtype)
  cholesky = jax.scipy.linalg.cho_factor(G + rho * eye, lower=True)
  return Factor(jax.scipy.linalg.cho_solve(cholesky, eye), rho, lipschitz)


def _times(x, M):
  return jnp.matmul(x, M, precision=_HIGHEST)


def _kkt(G, C, mu, factor: Factor):
  """z (n, d) -> ``_nnls``'s scale-free KKT residual (n,) for the right-hand sides C."""
  scale = jnp.maximum(jnp.max(jnp.abs(C), axis=-1), jnp.finfo(C.dtype).tiny)
  lipschitz = jnp.broadcast_to(factor.lipschitz, C.shape[:-1])
  return lambda z: _nnls._kkt_residual(z, _times(z, G) - C + mu, lipschitz, scale)


def init(z: jax.Array, error: jax.Array) -> ADMMState:
  """Starts from a non-negative z (n, d) with zero dual; ``error`` is the residual at z."""
  return ADMMState(z, jnp.zeros_like(z), jnp.zeros(z.shape[:-1], jnp.int32), error)


def step(state: ADMMState, B: jax.Array, factor: Factor) -> ADMMState:
  """One over-relaxed ADMM iteration; B = (C - mu) M is the constant part of the x-update.

  Leaves ``error`` and ``iter_num`` to the caller, which checks every CHECK_EVERY steps.
  """
  x = B + factor.rho * _times(state.z - state.y, factor.M)
  x = RELAXATION * x + (1 - RELAXATION) * state.z
  z = jnp.maximum(x + state.y, 0)
  return state._replace(z=z, y=state.y + x - z)


def solve_chunk(G, C, mu, H0, factor: Factor, max_iter: int, tol: float):
  """Solves the chunk C (n, d) until every residual is <= tol or ``max_iter`` iterations.

  ``factor`` is ``factorise(G)``, formed once for all chunks. Returns (h, n_iter, residual)
  like ``_nnls._solve_chunk``; n_iter counts in multiples of CHECK_EVERY (or up to max_iter).
  """
  B = _times(C - mu, factor.M)
  kkt = _kkt(G, C, mu, factor)

  def cond(carry):
    it, state = carry
    return (it < max_iter) & jnp.any(state.error > tol)

  def body(carry):
    it, state = carry
    n = jnp.minimum(CHECK_EVERY, max_iter - it)
    new = lax.fori_loop(0, n, lambda _, s: step(s, B, factor), state)
    new = new._replace(iter_num=state.iter_num + jnp.where(state.error > tol, n, 0),
                       error=kkt(new.z))
    return it + n, new

  z = jnp.maximum(H0, 0)
  state = lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), init(z, kkt(z))))[1]
  return state.z, state.iter_num, state.error


def solve_unrolled(G, C, mu, H0, n_steps: int):
  """Exactly ``n_steps`` iterations from H0, differentiable through each (and the factor)."""
  factor = factorise(G)
  B = _times(C - mu, factor.M)
  kkt = _kkt(G, C, mu, factor)
  z = jnp.maximum(H0, 0)
  state = lax.fori_loop(0, n_steps, lambda _, s: step(s, B, factor), init(z, kkt(z)))
  return state.z, state.iter_num, kkt(state.z)
