"""Plug-and-play uses of trained cones: features, anomaly scores, compression, clustering.

Samples are rows: X is (N, m) or (..., m); cones hold W of shape (K, m, d).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from conejax import _checks, _cone, _nnls, solvers

_HIGHEST = lax.Precision.HIGHEST


def features(cones: _cone.Cones, X, **options) -> jax.Array:
  """The codes on every cone, concatenated, as a representation: (..., K * d)."""
  H = _cone.codes(cones, X, **options)
  return H.reshape(H.shape[:-2] + (-1,))


def anomaly_score(cones: _cone.Cones, X, **options) -> jax.Array:
  """Distance to the nearest cone: (...). Large for samples no cone explains."""
  return jnp.min(_cone.distance(cones, X, **options), axis=-1)


@jax.jit
def _refit_on_support(G, C, support):
  """NNLS restricted to a per-sample support: G (d, d), C and support (N, d) -> (N, d)."""
  def one(c, keep):
    G_s = G * keep[:, None] * keep[None, :] + jnp.diag(1 - keep)
    problem = solvers.QuadraticProblem(G_s, (c * keep)[None], jnp.zeros((), c.dtype))
    return solvers.solve(solvers.ActiveSet(), problem).h[0]
  return jax.vmap(one)(C, support)


def compress(W, X, n_nonzero: int):
  """Codes with at most ``n_nonzero`` non-zeros per sample, and their relative errors.

  The support is the ``n_nonzero`` largest entries of the NNLS code (mu = 0); the code is
  then refitted by NNLS on that support alone.

  Args:
    W: (m, d) one dictionary (for ``Cones``, pass ``cones.W[k]``).
    X: (N, m) samples as rows.
    n_nonzero: non-zeros kept per sample, 1 <= n_nonzero <= d.

  Returns:
    codes (N, d) and relative errors ||x - W h|| / ||x|| (N,) (0 for a zero sample).
  """
  W = _checks.as_float_array(W, "W")
  _checks.check_ndim(W, "W", (2,), "(m, d)")
  X = _checks.as_float_array(X, "X")
  _checks.check_ndim(X, "X", (2,), "(N, m)")
  n_nonzero = _checks.check_positive_int(n_nonzero, "n_nonzero")
  if n_nonzero > W.shape[1]:
    raise ValueError(f"n_nonzero {n_nonzero} exceeds the {W.shape[1]} atoms of W.")
  H = _nnls.nnls(W, X).h
  threshold = lax.top_k(H, n_nonzero)[0][:, -1:]  # the n-th largest entry of each row
  support = ((H >= threshold) & (H > 0)).astype(H.dtype)
  G, C = jnp.dot(W.T, W, precision=_HIGHEST), jnp.dot(X, W, precision=_HIGHEST)
  H = _refit_on_support(G, C, support)
  # Ties at the threshold can keep more than n_nonzero entries; keep the largest ones.
  H = H * (jnp.argsort(jnp.argsort(-H, axis=1), axis=1) < n_nonzero)
  error = _cone._safe_norm(X - jnp.dot(H, W.T, precision=_HIGHEST))
  norm = _cone._safe_norm(X)
  return H, jnp.where(norm > 0, error / jnp.where(norm > 0, norm, 1), 0)


def _ray_distances(X, seeds):
  """Squared distance of each row of X (N, m) to each ray through seeds (S, m): (N, S)."""
  norms = jnp.sum(seeds**2, axis=1)
  inner = X @ seeds.T
  coefficient = jnp.maximum(inner, 0) / jnp.where(norms > 0, norms, 1)[None]
  return jnp.maximum(jnp.sum(X**2, axis=1)[:, None] - coefficient * inner, 0)


def _seed(key, X, n_clusters):
  """k-means++ on rays: each next seed drawn with probability proportional to its squared
  distance to the nearest ray through the seeds so far."""
  keys = jax.random.split(key, n_clusters)
  chosen = [int(jax.random.randint(keys[0], (), 0, X.shape[0]))]
  for k in range(1, n_clusters):
    nearest = jnp.min(_ray_distances(X, X[np.array(chosen)]), axis=1)
    total = jnp.sum(nearest)
    p = nearest / total if float(total) > 0 else jnp.full(X.shape[0], 1.0 / X.shape[0])
    chosen.append(int(jax.random.choice(keys[k], X.shape[0], p=p)))
  return np.asarray(jnp.argmin(_ray_distances(X, X[np.array(chosen)]), axis=1))


def kcones(X, n_clusters: int, rank: int, *, key: jax.Array, n_iter: int = 10,
           **fit_options):
  """Clustering by k-cones: assign each sample to its nearest cone, refit, repeat.

  Seeding is k-means++ on rays (rank-one cones) from ``key``. A cluster left with fewer
  than ``rank`` samples takes the samples worst explained by their own cone.

  Args:
    X: (N, m) non-negative data.
    n_clusters: number of cones K >= 1.
    rank: atoms per cone.
    key: PRNG key for seeding and the NMF initialisations.
    n_iter: assignment/refit rounds (stops earlier when no label changes).
    fit_options: passed to ``fit_cones`` (mu_w, mu_h, method, init, max_iter, ...).

  Returns:
    labels (N,) in 0..K-1 and the fitted ``Cones``.
  """
  X = np.asarray(_checks.as_float_array(X, "X"))
  n_clusters = _checks.check_positive_int(n_clusters, "n_clusters")
  if n_clusters * rank > X.shape[0]:
    raise ValueError(f"{n_clusters} clusters of rank {rank} need at least "
                     f"{n_clusters * rank} samples; X has {X.shape[0]}.")
  seed_key, fit_key = jax.random.split(key)
  labels = _seed(seed_key, jnp.asarray(X), n_clusters)
  residual = np.sqrt(np.sum(X**2, axis=1))  # distance to the cone of each sample's cluster
  for round_ in range(_checks.check_positive_int(n_iter, "n_iter")):
    labels = _refill_small_clusters(labels, n_clusters, rank, residual)
    cones = _cone.fit_cones(X, labels, rank, key=jax.random.fold_in(fit_key, round_),
                            **fit_options)
    distances = np.asarray(_cone.distance(cones, X))
    new = np.argmin(distances, axis=1)
    residual = distances[np.arange(len(new)), new]
    if np.array_equal(new, labels):
      break
    labels = new
  return labels, cones


def _refill_small_clusters(labels, n_clusters, rank, residual):
  """Moves the worst-explained samples (largest ``residual``) into clusters with fewer than
  ``rank`` members."""
  labels = labels.copy()
  worst = np.argsort(-residual)
  counts = np.bincount(labels, minlength=n_clusters)
  for k in np.flatnonzero(counts < rank):
    for i in worst:
      if counts[k] >= rank:
        break
      if counts[labels[i]] > rank:  # donors keep at least ``rank`` members
        counts[labels[i]] -= 1
        counts[k] += 1
        labels[i] = k
  return labels
