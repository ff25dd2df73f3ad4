"""Initial factors for NMF: scaled random, NNDSVDa from a randomised SVD, and k-means.

Samples are rows: U is (N, m), the dictionary W is (m, d) with atoms as columns and the
codes H are (N, d), so U ~ H W^T. A sample mask (N,) of ones and zeros marks real rows;
masked rows get zero codes and do not enter any statistic, so padded classes behave as
if fitted alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from conejax import solvers

_HIGHEST = lax.Precision.HIGHEST
_ZERO_BELOW = 1e-6  # entries of the NNDSVD factors counted as zero, as in scikit-learn


def _masked_mean(U, mask):
  count = jnp.maximum(jnp.sum(mask), 1) * U.shape[1]
  return jnp.sum(U) / count


def random_init(key: jax.Array, U: jax.Array, rank: int, mask: jax.Array):
  """|N(0, 1)| factors scaled by sqrt(mean(U) / rank), as scikit-learn's "random".

  Row i of H is drawn from ``fold_in(key_h, i)``, so a class padded with extra rows gets
  the same codes for its real rows as when it is fitted alone.

  Returns:
    W (m, rank) and H (N, rank), H zero on masked rows.
  """
  key_w, key_h = jax.random.split(key)
  scale = jnp.sqrt(_masked_mean(U, mask) / rank).astype(U.dtype)
  W = jnp.abs(jax.random.normal(key_w, (U.shape[1], rank), U.dtype))
  row = lambda i: jnp.abs(jax.random.normal(jax.random.fold_in(key_h, i), (rank,), U.dtype))
  H = jax.vmap(row)(jnp.arange(U.shape[0]))
  return scale * W, scale * H * mask[:, None]


def randomized_svd(key: jax.Array, U: jax.Array, rank: int, n_oversamples: int = 10,
                   n_iter: int = 7):
  """Truncated SVD U ~ L diag(s) R^T by randomised range finding (Halko et al., 2011).

  Args:
    key: PRNG key for the Gaussian test matrix, of shape (m, rank + n_oversamples).
    U: (N, m) data.
    rank: number of singular triplets.

  Returns:
    L (N, rank), s (rank,), R (m, rank).
  """
  width = min(rank + n_oversamples, min(U.shape))
  omega = jax.random.normal(key, (U.shape[1], width), U.dtype)
  Q = jnp.linalg.qr(jnp.dot(U, omega, precision=_HIGHEST))[0]
  for _ in range(n_iter):
    Z = jnp.linalg.qr(jnp.dot(U.T, Q, precision=_HIGHEST))[0]
    Q = jnp.linalg.qr(jnp.dot(U, Z, precision=_HIGHEST))[0]
  left, s, right_t = jnp.linalg.svd(jnp.dot(Q.T, U, precision=_HIGHEST), full_matrices=False)
  return jnp.dot(Q, left[:, :rank], precision=_HIGHEST), s[:rank], right_t[:rank].T


def _safe_unit(x):
  norm = jnp.linalg.norm(x, axis=0)
  return x / jnp.where(norm > 0, norm, 1)[None], norm


def nndsvda_init(key: jax.Array, U: jax.Array, rank: int, mask: jax.Array):
  """NNDSVD with zeros filled by the mean of U (Boutsidis and Gallopoulos, 2008).

  Each singular pair keeps the positive or the negative part of its vectors, whichever
  carries more mass, as scikit-learn's ``init="nndsvda"`` does; the sign ambiguity of the
  SVD cancels out. The SVD is the randomised one, from ``key``.

  Returns:
    W (m, rank) and H (N, rank), H zero on masked rows.
  """
  left, s, right = randomized_svd(key, U * mask[:, None], rank)
  lp, lp_norm = _safe_unit(jnp.maximum(left, 0))
  ln, ln_norm = _safe_unit(jnp.maximum(-left, 0))
  rp, rp_norm = _safe_unit(jnp.maximum(right, 0))
  rn, rn_norm = _safe_unit(jnp.maximum(-right, 0))
  positive = lp_norm * rp_norm > ln_norm * rn_norm
  sigma = jnp.where(positive, lp_norm * rp_norm, ln_norm * rn_norm)
  lam, positive = jnp.sqrt(s * sigma)[None], positive[None]
  H = lam * jnp.where(positive, lp, ln)
  W = lam * jnp.where(positive, rp, rn)
  # The leading pair is sign-coherent (Perron-Frobenius): take absolute values.
  H = H.at[:, 0].set(jnp.sqrt(s[0]) * jnp.abs(left[:, 0]))
  W = W.at[:, 0].set(jnp.sqrt(s[0]) * jnp.abs(right[:, 0]))
  avg = _masked_mean(U, mask)
  W = jnp.where(W < _ZERO_BELOW, avg, W)
  H = jnp.where(H < _ZERO_BELOW, avg, H)
  return W, H * mask[:, None]


def _squared_distances(U, sq_norms, centers):
  """||u_i - c_j||^2 for rows U (N, m) and centers (k, m), clipped at zero: (N, k)."""
  cross = jnp.dot(U, centers.T, precision=_HIGHEST)
  return jnp.maximum(sq_norms[:, None] - 2 * cross + jnp.sum(centers**2, axis=1)[None], 0)


def kmeans(key: jax.Array, U: jax.Array, k: int, mask: jax.Array, n_iter: int = 30):
  """k-means++ seeding (from ``key``) and ``n_iter`` Lloyd steps on the unmasked rows.

  Returns:
    centers (k, m); a cluster left empty keeps its previous center.
  """
  U = jnp.asarray(U)
  mask = jnp.asarray(mask, U.dtype)
  n = U.shape[0]
  sq_norms = jnp.sum(U**2, axis=1)
  keys = jax.random.split(key, k)
  uniform = mask / jnp.sum(mask)
  first = U[jax.random.choice(keys[0], n, p=uniform)]
  nearest = _squared_distances(U, sq_norms, first[None])[:, 0] * mask

  def seed(i, carry):
    centers, nearest = carry
    total = jnp.sum(nearest)
    p = jnp.where(total > 0, nearest / jnp.where(total > 0, total, 1), uniform)
    center = U[jax.random.choice(keys[i], n, p=p)]
    distance = _squared_distances(U, sq_norms, center[None])[:, 0] * mask
    return centers.at[i].set(center), jnp.minimum(nearest, distance)

  centers = jnp.zeros((k, U.shape[1]), U.dtype).at[0].set(first)
  centers, _ = lax.fori_loop(1, k, seed, (centers, nearest))

  def lloyd(_, centers):
    assign = jnp.argmin(_squared_distances(U, sq_norms, centers), axis=1)
    onehot = (assign[:, None] == jnp.arange(k)[None]).astype(U.dtype) * mask[:, None]
    counts = jnp.sum(onehot, axis=0)[:, None]
    sums = jnp.dot(onehot.T, U, precision=_HIGHEST)
    return jnp.where(counts > 0, sums / jnp.maximum(counts, 1), centers)

  return lax.fori_loop(0, n_iter, lloyd, centers)


def kmeans_init(key: jax.Array, U: jax.Array, rank: int, mask: jax.Array):
  """Atoms at the k-means centroids of the data; codes by NNLS on them.

  Centroids are averages of samples, so the atoms start as whole prototypes rather than
  parts; for nearest-cone classification this keeps each cone close to its own class
  (see experiments/sweep_cones.py). The codes are NNLS codes plus 1% of their mean, so
  that multiplicative updates, which cannot revive a zero, may use every atom.

  Returns:
    W (m, rank) and H (N, rank), H zero on masked rows.
  """
  W = jnp.maximum(kmeans(key, U, rank, mask).T, 0)
  G = jnp.dot(W.T, W, precision=_HIGHEST)
  C = jnp.dot(U, W, precision=_HIGHEST)
  problem = solvers.QuadraticProblem(G, C, jnp.zeros((), U.dtype))
  H = solvers.solve(solvers.APG(max_iter=200), problem).h
  fill = 0.01 * jnp.sum(H) / jnp.maximum(jnp.sum(mask) * rank, 1)
  return W, (H + fill) * mask[:, None]


INITS = {"random": random_init, "nndsvda": nndsvda_init, "kmeans": kmeans_init}


def fill_missing(U: jax.Array, weights: jax.Array | None, mask: jax.Array):
  """U with each entry of weight w moved to w u + (1 - w) times its feature's weighted mean.

  The inits are written for complete data; a missing entry (weight 0) held at zero would
  pull them down. Only the init sees the filled data; the fit weighs the entries. Masked
  (padding) rows stay zero.
  """
  if weights is None:
    return U
  mean = jnp.sum(weights * U, axis=0) / jnp.maximum(jnp.sum(weights, axis=0), 1e-12)
  return (weights * U + (1 - weights) * mean[None]) * mask[:, None]


def with_fixed_atoms(U: jax.Array, W: jax.Array, H: jax.Array, fixed: jax.Array | None,
                     mask: jax.Array):
  """[fixed, W] (m, d0 + d) and codes (N, d0 + d): for the fixed atoms each sample's
  projection coefficient u . w / |w|^2, divided by the number of atoms so that the sum of
  all parts starts at the data's scale."""
  if fixed is None:
    return W, H
  norm2 = jnp.sum(fixed**2, axis=0)
  H_fixed = jnp.dot(U, fixed, precision=_HIGHEST) / jnp.where(norm2 > 0, norm2, 1)[None]
  H_fixed = H_fixed / (fixed.shape[1] + W.shape[1]) * mask[:, None]
  return jnp.concatenate([fixed, W], axis=1), jnp.concatenate([H_fixed, H], axis=1)
