"""Cones under a beta-divergence: the options, data checks, codes and distances.

Cones fitted with ``fit_cones(..., beta_loss=...)`` code a sample x on cone k by
h_k = argmin_{h >= 0} D_beta(x | W_k h) + mu_h sum(h) (``_nmf_steps.multiplicative_codes``,
each sample on its own) and measure D_k(x) = sqrt(2 D_beta(x | W_k h_k)); ``conejax.codes``,
``distance`` (``_cone``) and ``reconstruct`` (``_inverse``) call these functions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from conejax import _checks, _nmf_steps

_HIGHEST = jax.lax.Precision.HIGHEST

_NNLS_DEFAULTS = dict(solver="auto", batch_size=2048, penalty="absolute",
                      differentiation="implicit")


def multiplicative_options(beta, options, where: str):
  """(max_iter, tol) of the multiplicative updates under a beta-divergence (200 and 1e-5 for
  None, as ``nmf_codes``); the options of the NNLS solvers must keep their defaults."""
  rest = dict(options)
  max_iter, tol = rest.pop("max_iter", None), rest.pop("tol", None)
  unknown = sorted(set(rest) - set(_NNLS_DEFAULTS))
  if unknown:
    raise TypeError(f"{where} got unexpected options {unknown}.")
  changed = sorted(name for name, value in rest.items() if not (
      isinstance(value, (str, int, np.integer)) and value == _NNLS_DEFAULTS[name]))
  if changed:
    given = ", ".join(f"{name}={rest[name]!r}" for name in changed)
    raise ValueError(f"{where}: beta_loss {beta:g} codes by multiplicative updates "
                     f"(conejax.nmf_codes), where {given} does not apply (the NNLS options "
                     "serve beta_loss='frobenius'); leave it at its default. max_iter and tol "
                     "set the updates.")
  max_iter = 200 if max_iter is None else _checks.check_positive_int(max_iter, "max_iter")
  return max_iter, 1e-5 if tol is None else float(_checks.check_tol(tol))


def check_data(X, name: str, beta: float, weighted: bool = False) -> None:
  """Data D_beta can measure: non-negative, and non-zero where beta <= 0 (concrete only;
  ``weighted``: the zeros of non-zero weight were checked with the weights)."""
  _checks.check_nonnegative(X, name)
  if beta <= 0 and not weighted and _checks.is_concrete(X) and np.any(np.asarray(X) == 0):
    raise ValueError(f"beta_loss {beta:g} (beta <= 0) is infinite where {name} is 0: {name} has "
                     f"{int(np.sum(np.asarray(X) == 0))} zero entries. Add a small floor (e.g. "
                     f"{name} + 1e-9 * {name}.max()).")


def divergences(X, WH, beta: float, weights=None):
  """D_beta(x | wh) summed over the last axis, as ``nmf_objective`` sums it: X (and the
  entry weights, None for all ones) broadcast to WH (..., m), returns (...)."""
  X = jnp.broadcast_to(X, WH.shape).reshape(-1, WH.shape[-1])
  M = None if weights is None else jnp.broadcast_to(weights, WH.shape).reshape(X.shape)
  one = lambda x, wh, w: _nmf_steps.beta_divergence(x, wh, beta, w)
  return jax.vmap(one)(X, WH.reshape(X.shape), M).reshape(WH.shape[:-1])


def distance_of(D):
  """sqrt(2 D) for divergences D >= 0 (rounding below 0 is 0); the gradient at 0 is 0."""
  positive = D > 0  # NaN stays NaN
  return jnp.where(positive, jnp.sqrt(2 * jnp.where(positive, D, 1)), jnp.where(D <= 0, 0, D))


@functools.partial(jax.jit, static_argnames=("beta", "max_iter", "tol"))
def cone_codes(W, X, mu_h, widths, weights=None, *, beta, max_iter, tol):
  """The codes of X (N, m) on each cone W_k under D_beta (lax.map over the cones), each
  sample on its own (``_nmf_steps.multiplicative_codes``: the updates of ``nmf_codes`` for
  that sample alone): codes (N, K, d), distances sqrt(2 D_beta(x | W_k h_k)) (N, K) and
  whether each solve stopped by its tolerance (N, K) (tol = 0 asks for every update).
  With entry weights (N, m) in [0, 1], the weighted divergence sum M d_beta throughout."""

  def one(args):
    W_k, d_k = args
    forward = lambda H: jnp.dot(H, W_k.T, precision=_HIGHEST)
    adjoint = lambda R: jnp.dot(R, W_k, precision=_HIGHEST)
    H, n_iter = _nmf_steps.multiplicative_codes(forward, adjoint, X, mu_h, d_k, beta=beta,
                                                max_iter=max_iter, tol=tol, weights=weights)
    return H, divergences(X, forward(H), beta, weights), (n_iter < max_iter) | (tol == 0)

  X = jnp.where(jnp.any(X < 0, axis=1, keepdims=True), jnp.nan, X)  # (unchecked under jit)
  H, D, converged = lax.map(one, (W, widths))
  return jnp.moveaxis(H, 0, 1), distance_of(D.T), converged.T
