"""The posterior mixture over K cones: its weights, mean, and per-pixel variance.

``reconstruct(select="posterior")`` weighs cone k's estimate u_k = W_k h_k of an
observation v by p_k = softmax(-D_k^2 / T) and returns the mixture's mean and standard
deviation. ``variance="mixture"`` is the spread sum_k p_k (u_k - u)^2; ``"total"`` adds,
by the law of total variance, sum_k p_k s_k^2 with s_k^2 the per-pixel variance of cone
k's least-squares estimate on its active set (``within_variances``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from conejax import _loops
from conejax.operators import _base as operators

_HIGHEST = lax.Precision.HIGHEST


def posterior_weights(misfit, temperature, loss):
  """p_k = softmax(-D_k^2 / T) with D_k^2 = 2 misfit_k (l2, as ``predict_proba``) or
  softmax(-misfit_k / T) (l1), over the last axis, from differences to the smallest."""
  scaled = misfit * (2 if loss == "l2" else 1)
  return jax.nn.softmax(-(scaled - jnp.min(scaled, -1, keepdims=True)) / temperature, -1)


def mixture(U, p, within=None):
  """Mean sum_k p_k u_k and per-pixel standard deviation of (N, K, m) U under (N, K) p,
  plus sum_k p_k within_k with each component's own variance ``within`` (N, K, m)."""
  mean = jnp.einsum("nk,nkm->nm", p, U, precision=_HIGHEST)
  spread = (U - mean[:, None]) ** 2 if within is None else (U - mean[:, None]) ** 2 + within
  var = jnp.einsum("nk,nkm->nm", p, spread, precision=_HIGHEST)
  positive = var > 0
  return mean, jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1)), 0)  # grad-safe at 0


def _gram_and_reach(B, M):
  """B^T diag(M) B (d, d) of one cone through its operator, B = A W_k (k, d), and n, the
  weight of the entries it reaches (rows of B that are not all zero); M None is all ones."""
  M = jnp.ones(B.shape[:1], B.dtype) if M is None else M
  G = jnp.dot(B.T * M[None], B, precision=_HIGHEST)
  return G, jnp.sum(jnp.where(jnp.any(B != 0, axis=-1), M, 0))


def _support_variance(G, reached, W_k, h, misfit):
  """Per-pixel variance (m,) of W_k h's least-squares estimate on its active set, one sample.

  The code's covariance on the support S = {h > 0} is sigma^2 (G_SS + eps I)^{-1}, with G
  from ``_gram_and_reach``, sigma^2 = 2 misfit / max(n - |S|, 1) the noise variance
  estimated from the residual and eps = sqrt(machine epsilon) max_j G_jj, a ridge that
  keeps a near-singular support finite; the variance of u = W_k h is the diagonal of
  W_S Cov W_S^T.
  """
  active = h > 0
  eps = jnp.sqrt(jnp.finfo(G.dtype).eps) * jnp.max(jnp.diagonal(G))
  both = active[:, None] & active[None, :]
  system = jnp.where(both, G, 0) + jnp.diag(jnp.where(active, eps, 1.0))
  inverse = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(system), True),
                                       jnp.eye(h.shape[-1], dtype=G.dtype))
  inverse = jnp.where(both, inverse, 0)
  noise = 2 * misfit / jnp.maximum(reached - jnp.sum(active), 1)
  Y = jnp.dot(W_k, inverse, precision=_HIGHEST)
  return noise * jnp.sum(Y * W_k, axis=-1)


def within_variances(W, B, A, h, misfit, weights, per_sample: bool, chunk: int):
  """(n, K, m) ``_support_variance`` of every sample on every cone, ``chunk`` samples at a
  time: W (K, m, d), codes h (n, K, d), misfits (n, K), entry weights (n, k) or None.

  B is the (K, k, d) stack A W_k of a shared operator (None with per-sample operators A,
  whose A_i W_k are formed per sample). The Grams B_k^T B_k are formed once when they are
  shared (one operator, no weights), per sample otherwise."""
  support = jax.vmap(_support_variance)
  if not per_sample and weights is None:
    G, reached = jax.vmap(_gram_and_reach, (0, None))(B, None)
    return _loops.in_chunks(
        lambda a: jax.vmap(lambda h_i, f_i: support(G, reached, W, h_i, f_i))(*a),
        (h, misfit), chunk)

  def one(args):
    A_i, h_i, misfit_i, M_i = args
    B_i = jax.vmap(operators.apply_to_dictionary, (None, 0))(A_i, W) if per_sample else B
    G_i, reached_i = jax.vmap(_gram_and_reach, (0, None))(B_i, M_i)
    return support(G_i, reached_i, W, h_i, misfit_i)

  if not per_sample:
    A = jnp.zeros(h.shape[:1], h.dtype)   # a placeholder leaf, one per sample
  return _loops.in_chunks(lambda a: jax.vmap(one)(a), (A, h, misfit, weights), chunk)
