"""The contract every NNLS solver meets, and what they all return.

Two problems are solved, for a batch of samples as rows:

    quadratic (``QuadraticProblem``):  argmin_{h >= 0} 0.5 h^T G h - c^T h + mu sum(h),
        with G = W^T W (d, d) and c = W^T v, i.e. 0.5 ||W h - v||^2 + mu sum(h) up to a
        constant; G may also be a function h -> h G (matrix-free, one operator per sample);
    least absolute deviations (``L1Problem``):  argmin_{h >= 0} ||B h - v||_1 + mu sum(h).

A solver is a frozen dataclass whose fields are its settings (hashable, so it is a static
argument of ``jit``), with

    prepare(problem) -> aux           what every chunk shares (a step size, a factorisation)
    init(problem, aux, h0) -> state   a NamedTuple whose every leaf has a leading sample axis
    step(problem, aux, state) -> state
    residual(problem, aux, state) -> (n,) scale-free stopping measure
    solution(problem, aux, state) -> (n, d) codes

The driver (``conejax.solvers.solve``) owns the rest: chunks, the loop, freezing of
converged samples (so a sample's result never depends on the rest of its batch), the
result and differentiation.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from conejax import _checks

HIGHEST = lax.Precision.HIGHEST


class ConvergenceWarning(UserWarning):
  """A solve stopped at its iteration cap with samples above their tolerance."""


class NNLSResult(NamedTuple):
  """Solution of a batch of (sparse) NNLS problems.

  Attributes:
    h: (..., d) the codes, >= 0.
    n_iter: (...) int32 iterations each sample took.
    residual: (...) the final scale-free residual of each sample: the KKT residual
      ``kkt_residual`` for the quadratic problem, the duality gap plus dual infeasibility
      for the L1 problem.
    converged: (...) bool, whether the sample met its solver's stopping test (tolerance
      reached, or for ``ActiveSet`` a feasible active set found) before ``max_iter``.
  """
  h: jax.Array
  n_iter: jax.Array
  residual: jax.Array
  converged: jax.Array


class QuadraticProblem(NamedTuple):
  """argmin_{h >= 0} 0.5 h^T G h - c^T h + mu sum(h) for every row c of C.

  Attributes:
    G: (d, d) symmetric positive semi-definite Gram matrix, or a function mapping codes
      (n, d) to their Gram products (matrix-free; then ``lipschitz`` is required).
    C: (n, d) right-hand sides W^T v, one row per sample.
    mu: () L1 weight >= 0.
    lipschitz: None, or () / (n,) upper bounds on the largest eigenvalue of G.
  """
  G: Any
  C: jax.Array
  mu: jax.Array
  lipschitz: Any = None

  @property
  def matrix_free(self) -> bool:
    return callable(self.G)


class L1Problem(NamedTuple):
  """argmin_{h >= 0} ||B h - v||_1 + mu sum(h) for every row v of V.

  Attributes:
    B: (k, d) dictionary, atoms as columns.
    V: (n, k) samples.
    mu: () L1 weight >= 0.
  """
  B: jax.Array
  V: jax.Array
  mu: jax.Array


def gram_times(G, H):
  """H G for codes H (n, d): one matrix product (G symmetric), or the matrix-free map."""
  return G(H) if callable(G) else jnp.matmul(H, G, precision=HIGHEST)


def lipschitz_constant(G: jax.Array) -> jax.Array:
  """Largest eigenvalue of the (d, d) Gram matrix G, floored away from zero."""
  top = jnp.linalg.eigvalsh(G)[-1]
  return jnp.maximum(top, jnp.finfo(G.dtype).tiny)


def kkt_scale(C: jax.Array) -> jax.Array:
  """||c||_inf per sample (n,), the normaliser of the KKT residual (tiny for c = 0)."""
  return jnp.maximum(jnp.max(jnp.abs(C), axis=-1), jnp.finfo(C.dtype).tiny)


def kkt_residual(h, grad, lipschitz, scale):
  """Scale-free KKT residual ||h - max(h - grad / L, 0)||_inf * L / ||c||_inf per sample.

  Zero exactly at the solution; unchanged when V, W and mu are rescaled together.
  """
  lipschitz = jnp.broadcast_to(lipschitz, h.shape[:-1])
  step = jnp.abs(h - jnp.maximum(h - grad / lipschitz[..., None], 0))
  return jnp.max(step, axis=-1) * lipschitz / scale


class AbstractSolver:
  """Base of every NNLS solver: settings as dataclass fields, the protocol as methods.

  Class attributes a solver sets:
    problem_type: ``QuadraticProblem`` or ``L1Problem``.
    check_every: steps between two evaluations of ``residual`` (1 for solvers whose step
      computes it anyway).
    supports_unroll: whether ``differentiation="unroll"`` may run its steps.
    supports_implicit: whether ``differentiation="implicit"`` applies (the quadratic
      problem with a Gram matrix; the driver differentiates the KKT conditions).
    matrix_free_ok: whether G may be a function.
    compacts: whether the driver may move the unconverged samples of a chunk into a
      smaller block (every leaf of the state has the leading sample axis and ``aux`` is
      shared by all samples), so a long tail of slow samples does not step the whole chunk.
  """
  problem_type: type = QuadraticProblem
  check_every: int = 1
  supports_unroll: bool = False
  supports_implicit: bool = True
  matrix_free_ok: bool = False
  compacts: bool = False
  max_iter: int
  tol: float | None

  def default_tol(self, dtype) -> float:
    raise NotImplementedError

  def stopping_tol(self, dtype) -> float:
    return self.default_tol(dtype) if self.tol is None else float(self.tol)

  def prepare(self, problem):
    return None

  def init(self, problem, aux, h0):
    raise NotImplementedError

  def step(self, problem, aux, state):
    raise NotImplementedError

  def residual(self, problem, aux, state):
    return state.error

  def solution(self, problem, aux, state):
    return jnp.maximum(state.h, 0)

  def validate_settings(self, *counts: str) -> None:
    """Checks max_iter, tol (when the solver has one) and the named positive counts, with
    ``conejax._checks``' messages; called by each solver's ``__post_init__``."""
    object.__setattr__(self, "max_iter", _checks.check_positive_int(self.max_iter, "max_iter"))
    if "tol" in getattr(self, "__dataclass_fields__", {}) and self.tol is not None:
      object.__setattr__(self, "tol", _checks.check_tol(self.tol))
    for name in counts:
      _checks.check_positive_int(getattr(self, name), name)

  def kkt_lipschitz(self, problem, aux):
    """The L of the KKT residual reported for the quadratic problem."""
    return getattr(aux, "lipschitz", aux)


def is_concrete(*arrays) -> bool:
  return all(_checks.is_concrete(x) for x in jax.tree.leaves(arrays))


def warn_if_not_converged(result, where: str, stacklevel: int = 3) -> None:
  """Emits ``ConvergenceWarning`` when a concrete result has samples that did not converge.

  ``result`` is any result with a ``converged`` field (and optionally ``residual``: the
  warning then names the worst one). Does nothing under ``jit``/``vmap``/``grad``
  tracing, where values are unknown; there ``result.converged`` says the same.
  """
  converged = getattr(result, "converged", None)
  residual = getattr(result, "residual", None)
  if converged is None or not is_concrete(converged, residual):
    return
  converged = np.asarray(converged)
  if converged.all():
    return
  failed = ~converged
  worst = ""
  if residual is not None:
    worst = f" (worst residual {float(np.max(np.asarray(residual)[failed])):.3g})"
  warnings.warn(
      f"{where}: {int(failed.sum())} of {converged.size} solves stopped at max_iter above "
      f"their tolerance{worst}. Raise max_iter or loosen tol; for least squares, "
      f"solver='active_set' is exact. result.converged marks them.", ConvergenceWarning,
      stacklevel=stacklevel)


def tree_select(pred, new, old):
  """Per sample: leaves of ``new`` where pred (n,) holds, else ``old``'s."""
  def pick(a, b):
    return jnp.where(pred.reshape(pred.shape + (1,) * (a.ndim - 1)), a, b)
  return jax.tree.map(pick, new, old)
