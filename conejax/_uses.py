"""Plug-and-play uses of trained cones: features, anomaly scores, compression, clustering.

Samples are rows: X is (N, m) or (..., m); cones hold W of shape (K, m, d).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from conejax import _checks, _cone, _scale, solvers

_HIGHEST = lax.Precision.HIGHEST


def features(cones: _cone.Cones, X, **options) -> jax.Array:
  """The codes on every cone, concatenated, as a representation: (..., K * d)."""
  H = _cone.codes(cones, X, **options)
  return H.reshape(H.shape[:-2] + (H.shape[-2] * H.shape[-1],))


def anomaly_score(cones: _cone.Cones, X, **options) -> jax.Array:
  """Distance to the nearest cone: (...). Large for samples no cone explains."""
  return jnp.min(_cone.distance(cones, X, **options), axis=-1)


def _refit_on_support(G, C, support):
  """NNLS restricted to a per-sample support: G (d, d), C and support (N, d) -> (N, d)."""
  def one(c, keep):
    G_s = G * keep[:, None] * keep[None, :] + jnp.diag(1 - keep)
    problem = solvers.QuadraticProblem(G_s, (c * keep)[None], jnp.zeros((), c.dtype))
    return solvers.solve(solvers.ActiveSet(), problem).h[0]
  return jax.vmap(one)(C, support)


def _compress_unit(W, X, n_nonzero):
  """``compress`` on W and X already at unit scale (finite): codes (N, d), errors (N,)."""
  G, C = jnp.dot(W.T, W, precision=_HIGHEST), jnp.dot(X, W, precision=_HIGHEST)
  problem = solvers.QuadraticProblem(G, C, jnp.zeros((), X.dtype))
  H = solvers.solve(solvers.resolve("auto", n_atoms=W.shape[1], n_features=W.shape[0]),
                    problem).h
  threshold = lax.top_k(H, n_nonzero)[0][:, -1:]  # the n-th largest entry of each row
  support = ((H >= threshold) & (H > 0)).astype(H.dtype)
  H = _refit_on_support(G, C, support)
  # Ties at the threshold can keep more than n_nonzero entries; keep the largest ones.
  H = H * (jnp.argsort(jnp.argsort(-H, axis=1), axis=1) < n_nonzero)
  error = _scale.norm(X - jnp.dot(H, W.T, precision=_HIGHEST))
  norm = _scale.norm(X)
  return H, jnp.where(norm > 0, error / jnp.where(norm > 0, norm, 1), 0)


_NO_GRAD_COMPRESS = ("compress is not differentiable (its support selection and active-set "
                     "refit are discrete); differentiate conejax.nnls or conejax.codes instead, "
                     "or wrap the call in jax.lax.stop_gradient.")


@functools.partial(jax.jit, static_argnames="n_nonzero")
def _compress(W, X, *, n_nonzero):
  """Scale-safe: each sample over a power of two a near its largest entry, W over b; the
  codes are (a / b) times those at unit scale, the relative errors unchanged."""
  ea, eb = _scale.exponent_of(X, -1), _scale.exponent_of(W, None)
  finite = jnp.all(jnp.isfinite(X), -1) & jnp.all(jnp.isfinite(W))
  X_unit = jnp.where(finite[:, None], jnp.ldexp(X, -ea[:, None]), 0)
  W_unit = jnp.where(jnp.all(jnp.isfinite(W)), jnp.ldexp(W, -eb), 0)
  unit = _checks.not_differentiable(functools.partial(_compress_unit, n_nonzero=n_nonzero),
                                    _NO_GRAD_COMPRESS)
  H, error = unit(W_unit, X_unit)
  nan = jnp.asarray(jnp.nan, X.dtype)
  return (jnp.where(finite[:, None], jnp.ldexp(H, (ea - eb)[:, None]), nan),
          jnp.where(finite, error, nan))


def compress(W, X, n_nonzero: int):
  """Codes with at most ``n_nonzero`` non-zeros per sample, and their relative errors.

  The support is the ``n_nonzero`` largest entries of the NNLS code (mu = 0); the code is
  then refitted by NNLS on that support alone. Scale-safe (data and W of any magnitude);
  works under ``jit`` and ``vmap`` (a NaN sample gets NaN codes and error); not
  differentiable (``grad`` raises a ``TypeError`` saying so).

  Args:
    W: (m, d) one dictionary (for ``Cones``, pass ``cones.W[k]``).
    X: (N, m) samples as rows.
    n_nonzero: non-zeros kept per sample, 1 <= n_nonzero <= d.

  Returns:
    codes (N, d) and relative errors ||x - W h|| / ||x|| (N,) (0 for a zero sample).

  Raises:
    ValueError: on wrong shapes, an empty W, non-finite or negative W, non-finite X or
      n_nonzero outside 1..d.
  """
  W = _checks.as_float_array(W, "W")
  _checks.check_ndim(W, "W", (2,), "(m, d)")
  X = _checks.as_float_array(X, "X")
  _checks.check_ndim(X, "X", (2,), "(N, m)")
  if 0 in W.shape:
    raise ValueError(f"W has an empty axis, shape {tuple(W.shape)}; it needs at least one "
                     "feature and one atom.")
  if X.shape[1] != W.shape[0]:
    raise ValueError(f"X must have shape (N, {W.shape[0]}) for W of shape {tuple(W.shape)}; "
                     f"got {tuple(X.shape)}. Samples are rows.")
  _checks.check_finite(W, "W")
  _checks.check_nonnegative(W, "W")
  _checks.check_finite(X, "X")
  n_nonzero = _checks.check_positive_int(n_nonzero, "n_nonzero")
  if n_nonzero > W.shape[1]:
    raise ValueError(f"n_nonzero {n_nonzero} exceeds the {W.shape[1]} atoms of W; choose "
                     f"n_nonzero <= {W.shape[1]}.")
  dtype = jnp.result_type(W, X)
  if X.shape[0] == 0:
    return jnp.zeros((0, W.shape[1]), dtype), jnp.zeros((0,), dtype)
  return _compress(W.astype(dtype), X.astype(dtype), n_nonzero=n_nonzero)


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
  _checks.require_concrete("kcones", "Cluster outside jit (its rounds and cluster refills "
                           "run in Python); the fitted cones then work under jit.", X=X)
  X = _checks.as_float_array(X, "X")
  _checks.check_ndim(X, "X", (2,), "(N, m), samples as rows")
  if 0 in X.shape:
    raise ValueError(f"X is empty, shape {tuple(X.shape)}; k-cones needs samples and features.")
  _checks.check_finite(X, "X")
  _checks.check_nonnegative(X, "X")
  X = np.asarray(X)
  n_clusters = _checks.check_positive_int(n_clusters, "n_clusters")
  rank = _checks.check_positive_int(rank, "rank")
  if n_clusters * rank > X.shape[0]:
    raise ValueError(f"{n_clusters} clusters of rank {rank} need at least "
                     f"{n_clusters * rank} samples; X has {X.shape[0]}.")
  seed_key, fit_key = jax.random.split(key)
  # Seeding compares squared distances: at unit scale (exact, a power of two) they stay
  # in the float range.
  labels = _seed(seed_key, jnp.asarray(X) / _scale.scale_of(X, None), n_clusters)
  residual = np.asarray(_scale.norm(X))  # distance to the cone of each sample's cluster
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
