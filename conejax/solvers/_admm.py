"""ADMM with a cached factorisation for the quadratic problem.

Splits h into an unconstrained x and a non-negative z (Boyd et al. 2011, "Distributed
optimization and statistical learning via ADMM", quadratic programming in section 5.2 and
over-relaxation in section 3.4.3), with scaled dual y and penalty rho:

    x <- (G + rho I)^{-1} (c - mu + rho (z - y))
    z <- max(a x + (1 - a) z + y, 0)
    y <- y + a x + (1 - a) z_old - z

(G + rho I)^{-1} is formed once per call (``prepare``), so an iteration costs one product
with a (d, d) matrix, as an APG step does. It depends far less on the conditioning of G
than APG and reaches a moderate KKT residual (1e-3, 1e-4) on blurred or subsampled
dictionaries in a fraction of APG's iterations; tight tolerances favour APG or, exactly,
``ActiveSet``. rho is ``rho`` times the largest eigenvalue of G and a = ``relaxation``.
The KKT residual (as APG's) is evaluated every ``check_every`` iterations. Its float32
iterates stall near a residual of 1e-6, so the float32 default tolerance is 1e-5.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from conejax.solvers import _protocol
from conejax.solvers._protocol import HIGHEST, QuadraticProblem, kkt_residual, kkt_scale


class ADMMState(NamedTuple):
  """Attributes: z (n, d) non-negative iterate, y (n, d) scaled dual."""
  z: jax.Array
  y: jax.Array


class ADMMFactor(NamedTuple):
  """M = (G + rho I)^{-1} (d, d), rho and the largest eigenvalue L of G."""
  M: jax.Array
  rho: jax.Array
  lipschitz: jax.Array


@dataclasses.dataclass(frozen=True)
class ADMM(_protocol.AbstractSolver):
  """Over-relaxed ADMM with (G + rho I)^{-1} formed once per call.

  Attributes:
    max_iter: iteration cap per sample.
    tol: KKT residual tolerance; None is 1e-5 (float32) or 1e-10 (float64).
    rho: penalty, relative to the largest eigenvalue of G.
    relaxation: over-relaxation a in (0, 2).
    check_every: iterations between two residual checks.
  """
  max_iter: int = 1000
  tol: float | None = None
  rho: float = 0.01
  relaxation: float = 1.6
  check_every: int = 10
  supports_unroll = True
  compacts = True

  def __post_init__(self):
    self.validate_settings("check_every")
    if not (float(self.rho) > 0 and 0 < float(self.relaxation) < 2):
      raise ValueError(f"ADMM needs rho > 0 and 0 < relaxation < 2; got rho={self.rho}, "
                       f"relaxation={self.relaxation}.")

  def default_tol(self, dtype) -> float:
    return 1e-10 if jnp.finfo(dtype).bits >= 64 else 1e-5

  def prepare(self, problem: QuadraticProblem) -> ADMMFactor:
    G = problem.G
    lipschitz = _protocol.lipschitz_constant(G)
    rho = self.rho * lipschitz
    eye = jnp.eye(G.shape[0], dtype=G.dtype)
    cholesky = jax.scipy.linalg.cho_factor(G + rho * eye, lower=True)
    return ADMMFactor(jax.scipy.linalg.cho_solve(cholesky, eye), rho, lipschitz)

  def init(self, problem, aux, h0) -> ADMMState:
    z = jnp.maximum(h0, 0)
    return ADMMState(z, jnp.zeros_like(z))

  def step(self, problem: QuadraticProblem, aux: ADMMFactor, state: ADMMState) -> ADMMState:
    x = jnp.matmul(problem.C - problem.mu + aux.rho * (state.z - state.y), aux.M,
                   precision=HIGHEST)
    x = self.relaxation * x + (1 - self.relaxation) * state.z
    z = jnp.maximum(x + state.y, 0)
    return ADMMState(z, state.y + x - z)

  def residual(self, problem: QuadraticProblem, aux: ADMMFactor, state: ADMMState):
    grad = jnp.matmul(state.z, problem.G, precision=HIGHEST) - problem.C + problem.mu
    return kkt_residual(state.z, grad, aux.lipschitz, kkt_scale(problem.C))

  def solution(self, problem, aux, state):
    return state.z
