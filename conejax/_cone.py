"""Cones as generative models: codes, projection, distance, likelihood and classification.

A ``Cones`` holds K dictionaries stacked on a leading axis, W of shape (K, m, d), with the
L1 weight ``mu_h`` of the projection. Samples are rows: X is (..., m). For each sample x
and cone k, the code is h_k(x) = argmin_{h >= 0} 0.5 ||W_k h - x||^2 + mu_h sum(h), the
projection is P_k(x) = W_k h_k(x), the distance D_k(x) = ||x - P_k(x)|| and the
(unnormalised) log-likelihood -D_k(x)^2 / temperature. Cones trained under a beta-divergence
(``fit_cones(..., beta_loss=...)``) code under it by default: h_k(x) minimises
D_beta(x | W_k h) + mu_h sum(h) (``conejax.nmf_codes``) and D_k(x) = sqrt(2 D_beta(x | W_k h_k)),
which for beta = 2 is the distance above.

Every function is a pure function of (cones, X), works under ``jit`` and ``vmap``, forms
each W_k^T W_k once per call, and codes one cone at a time so the working set stays in cache.
"""

from __future__ import annotations

import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from conejax import _checks, _divergence, _nmf, _nmf_checks, _nnls, _scale, solvers

_HIGHEST = lax.Precision.HIGHEST


@functools.partial(jax.tree_util.register_dataclass, data_fields=["W", "mu_h"],
                   meta_fields=["classes", "settings"])
@dataclasses.dataclass(frozen=True)
class Cones:
  """K stacked dictionaries and the projection penalty.

  Attributes:
    W: (K, m, d) dictionaries, atoms as columns, unit Euclidean norm.
    mu_h: () L1 weight of the codes in the projection.
    classes: tuple of K class labels (static: part of the tree structure).
    settings: tuple of (name, value) pairs recording how the cones were trained.
  """
  W: jax.Array
  mu_h: jax.Array
  classes: tuple = ()
  settings: tuple = ()

  @property
  def n_classes(self) -> int:
    return self.W.shape[0]

  @property
  def rank(self) -> int:
    """d, the width of W: the largest cone's number of atoms."""
    return self.W.shape[-1]

  @property
  def ranks(self) -> tuple[int, ...]:
    """Each cone's own number of atoms (ragged cones: the rest of its d columns are zero)."""
    recorded = dict(self.settings).get("ranks")
    return tuple(recorded) if recorded is not None else (self.W.shape[-1],) * self.W.shape[0]


def _plain(value):
  """numpy scalars and arrays in settings as Python numbers and lists (JSON, hashable)."""
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    value = value.tolist()
  if isinstance(value, (list, tuple)):
    return tuple(_plain(v) for v in value)
  return value


def _ragged(W):
  """A list of (m, d_k) dictionaries of different widths as one (K, m, max d_k) stack,
  zero-padded, and the widths; anything else unchanged (widths None)."""
  if not isinstance(W, (list, tuple)) or not len(W):
    return W, None
  parts = [_checks.as_float_array(w, f"W[{k}]") for k, w in enumerate(W)]
  if any(p.ndim != 2 for p in parts) or len({p.shape[1] for p in parts}) == 1:
    return W, None  # one width: the plain stack (shape errors are reported below)
  if len({p.shape[0] for p in parts}) != 1:
    raise ValueError(f"W's dictionaries must share m (rows); got {[p.shape for p in parts]}.")
  dtype = jnp.result_type(*parts)
  d = max(p.shape[1] for p in parts)
  stack = jnp.stack([jnp.pad(p.astype(dtype), ((0, 0), (0, d - p.shape[1]))) for p in parts])
  return stack, tuple(int(p.shape[1]) for p in parts)


def make_cones(W, mu_h=0.0, classes=None, settings=None) -> Cones:
  """Builds ``Cones`` from a (m, d) or (K, m, d) non-negative dictionary stack.

  Ragged cones: W may be a list of K dictionaries (m, d_k) of different widths. They are
  stacked zero-padded to d = max d_k (``Cones.ranks`` keeps each d_k). A zero atom changes
  nothing: its code is 0 (its gradient is mu_h >= 0 at h = 0, never negative), so codes
  (padded with zeros), projections, distances, predictions, reconstructions and separations
  are those of each cone on its own.

  Args:
    W: (m, d) or (K, m, d) non-negative, finite dictionaries, atoms as columns, or a list
      of K (m, d_k) dictionaries.
    mu_h: scalar L1 weight of the projection >= 0.
    classes: K distinct labels (numbers or strings); None is 0..K-1.
    settings: dict of how the cones were trained (numpy scalars become Python numbers).

  Raises:
    ValueError: on a wrong shape, an empty axis (K, m or d of 0), negative or non-finite
      W, mu_h < 0, or class labels that are not K distinct numbers or strings.
  """
  W, ranks = _ragged(W)
  W = _checks.as_float_array(W, "W")
  _checks.check_ndim(W, "W", (2, 3), "(m, d) or (K, m, d)")
  W = W[None] if W.ndim == 2 else W
  if 0 in W.shape:
    raise ValueError(f"W has an empty axis, shape (K, m, d) = {tuple(W.shape)}; cones need at "
                     "least one class, one feature and one atom.")
  _checks.check_finite(W, "W")
  _checks.check_nonnegative(W, "W")
  fix = "pass one distinct label per dictionary"
  classes = (tuple(range(W.shape[0])) if classes is None
             else tuple(_checks.check_labels(classes, "classes", fix).tolist()))
  if len(classes) != W.shape[0]:
    raise ValueError(f"{len(classes)} class labels given for {W.shape[0]} dictionaries; {fix}.")
  if len(set(classes)) != len(classes):
    repeated = sorted({c for c in classes if classes.count(c) > 1}, key=str)
    raise ValueError(f"classes has repeated labels {repeated}; {fix}.")
  mu_h = _checks.check_penalty(mu_h, "mu_h").astype(W.dtype)
  settings = dict(settings or {})
  if ranks is not None:
    settings["ranks"] = ranks
  settings = tuple(sorted((str(k), _plain(v)) for k, v in settings.items()))
  return Cones(W, mu_h, classes, settings)


def _fit_ragged(X, y, rank: dict, *, key, **options) -> Cones:
  """fit_cones with a rank per class: the classes of each rank fitted together."""
  _checks.require_concrete("fit_cones", "Fit the cones outside jit.", X=X, y=y)
  fix = "give rank={label: atoms} one entry per class of y"
  y = _checks.check_labels(y, "y", fix)
  classes = np.unique(y)
  missing = [c for c in classes.tolist() if c not in rank]
  extra = [c for c in rank if c not in set(classes.tolist())]
  if missing or extra:
    raise ValueError(f"rank has no entry for the classes {missing} of y and entries {extra} "
                     f"that are not classes of y; {fix}.")
  X = np.asarray(X) if not isinstance(X, jax.Array) else X
  W, n_iter = {}, {}
  for r in sorted({rank[c] for c in classes.tolist()}):
    group = [c for c in classes.tolist() if rank[c] == r]
    rows = np.flatnonzero(np.isin(y, group))
    weights = options.get("weights")
    part = fit_cones(X[rows], y[rows], r, key=jax.random.fold_in(key, r),
                     **dict(options, weights=None if weights is None else weights[rows]))
    for k, c in enumerate(part.classes):
      W[c], n_iter[c] = part.W[k], dict(part.settings)["n_iter"][k]
  order = classes.tolist()
  settings = dict(dict(part.settings), rank=tuple(int(rank[c]) for c in order),
                  n_train=int(np.shape(X)[0]), n_iter=tuple(n_iter[c] for c in order))
  settings.pop("ranks", None)
  return make_cones([W[c] for c in order], options.get("mu_h", 0.0), order, settings)


def fit_cones(X, y, rank: int | dict, *, key: jax.Array, mu_w=0.0, mu_h=0.0, method: str = "mu",
              init: str = "kmeans", max_iter: int = 20, tol: float = 1e-5,
              class_batch_size: int = 5, beta_loss="frobenius", weights=None,
              missing: str | None = None) -> Cones:
  """One cone per class: ``nmf_per_class`` on (X, y), atoms normalised to unit norm.

  The defaults are the best plain cones found on MNIST (experiments/sweep_cones.py):
  atoms started at the class's k-means centroids (whole prototypes) and refined by 20
  multiplicative updates, 96.7% on the ten digits at rank 64, where parts-based atoms
  from NNDSVDa or random starts and 200 updates reach 93.4-94.5%: they also combine
  into the other classes' digits.

  Args:
    X: (N, m) non-negative training data, samples as rows.
    y: (N,) class labels.
    rank: atoms per class, or ``{label: atoms}`` for a rank per class (ragged cones, see
      ``make_cones``; the classes of rank r are fitted together, with key fold_in(key, r)).
    key: PRNG key of the initialisation.
    mu_w, mu_h: L1 weights of the NMF, 0.5 ||U - H W^T||^2 + mu_w |W|_1 + mu_h |H|_1;
      ``mu_h`` is also the projection's penalty, with the same meaning: the atoms are kept
      at unit norm during training (``unit_atoms=True``), so the training codes are the
      projections' codes ``codes(cones, X)`` at a converged fit.
    method, init, max_iter, tol, class_batch_size: as in ``nmf_per_class``.
    beta_loss: the NMF's loss, as in ``nmf``: "frobenius" (default), "kullback-leibler",
      "itakura-saito" or a float beta; other than "frobenius" it needs ``method="mu"`` and
      X > 0 where beta <= 0. The atoms are then normalised after the fit (``unit_atoms``
      serves the Frobenius loss only), and the cones code and measure under this loss by
      default (``codes``, ``distance`` and the functions on them take ``beta_loss=None``).
    weights: None, or (N, m) weights in [0, 1] of the entries of X (0 = missing), as in
      ``nmf``: the weighted NMF fits the observed entries only (the k-means init sees the
      missing ones filled by their pixel's weighted class mean). The atoms are normalised
      after the fit, as for a beta-divergence. Code and classify incomplete samples with
      the same ``weights=`` in ``codes``, ``distance``, ``predict`` and ``reconstruct``
      (whose ``.u`` imputes them).
    missing: None, or "nan": NaN entries of X are missing (weight 0), as in ``nmf``.

  Returns:
    ``Cones`` with W (K, m, rank) and the training settings recorded (``n_iter``: the
    iterations each class's NMF ran; ``beta_loss``: the loss's name, or its beta).
  """
  weighted = weights is not None or missing is not None
  if weighted:   # checked here, to name X; NaNs become weight-0 zeros (split by rows if ragged)
    X, _, weights = _nmf_checks.check_loss(_checks.as_float_array(X, "X"), beta_loss, weights,
                                           missing, name="X")
    missing = None
  if isinstance(rank, dict):
    return _fit_ragged(X, y, rank, key=key, mu_w=mu_w, mu_h=mu_h, method=method, init=init,
                       max_iter=max_iter, tol=tol, class_batch_size=class_batch_size,
                       beta_loss=beta_loss, weights=weights)
  _checks.require_concrete("fit_cones", "Fit the cones outside jit; then codes, distance and "
                           "log_likelihood work under jit.", X=X, y=y)
  beta = _nmf_checks.beta_float(beta_loss)
  fit = _nmf.nmf_per_class(X, y, rank, key=key, mu_w=mu_w, mu_h=mu_h, method=method,
                           init=init, max_iter=max_iter, tol=tol,
                           class_batch_size=class_batch_size,
                           unit_atoms=beta == 2 and not weighted, beta_loss=beta_loss,
                           exact_codes=False, weights=weights, missing=missing)
  norm = jnp.linalg.norm(fit.W, axis=1, keepdims=True)
  W = fit.W / jnp.where(norm > 0, norm, 1)
  settings = dict(rank=int(rank), mu_w=float(mu_w), mu_h=float(mu_h), method=method, init=init,
                  max_iter=max_iter, tol=float(tol), n_train=int(np.shape(X)[0]),
                  n_iter=tuple(int(i) for i in np.asarray(fit.n_iter).reshape(-1)),
                  weighted=weighted,
                  beta_loss=beta_loss if isinstance(beta_loss, str) else beta)
  return make_cones(W, mu_h, fit.classes, settings)


def check_samples(cones: Cones, X):
  """X (..., m) as the cones' functions take it: a finite float array of the cones' width m
  and dtype (ValueError naming X otherwise); shared by fine-tuning and the sharded calls."""
  X = _checks.as_float_array(X, "X")
  if X.ndim < 1 or X.shape[-1] != cones.W.shape[1]:
    raise ValueError(f"X must have shape (..., m) with m = {cones.W.shape[1]}; got "
                     f"{tuple(X.shape)}. Samples are rows.")
  _checks.check_finite(X, "X")
  _checks.check_finite(cones.W, "cones.W")
  return X.astype(cones.W.dtype)


def _check_entries(cones: Cones, X, weights, missing, beta, name="X"):
  """X as ``check_samples`` checks it, with its entry weights checked as ``conejax.nmf``
  checks them (missing entries of X at 0): X and the weights (None: every entry observed)."""
  if weights is None and missing is None:
    return check_samples(cones, X), None
  X, _, weights = _nmf_checks.check_loss(_checks.as_float_array(X, name), beta, weights,
                                         missing, name=name)
  X = check_samples(cones, X)
  return X, weights.astype(X.dtype)


def _safe_norm(x, axis=-1):
  """Euclidean norm, scale-safe; NaN stays NaN and the gradient at zero is zero."""
  return _scale.norm(x, axis)


def _solve(cones: Cones, X, where, weights=None, *, solver="auto", max_iter=None, tol=None,
           differentiation="implicit", penalty="absolute", batch_size=2048):
  """The NNLS of every (checked) sample on every cone, scale-safe: (N.., K, d) results;
  with entry weights (N.., m), each through diag(sqrt(weights))."""
  solver, batch_size = _nnls.check_options(solver, max_iter=max_iter, tol=tol,
                                           batch_size=batch_size,
                                           differentiation=differentiation, penalty=penalty,
                                           n_atoms=cones.W.shape[-1],
                                           n_features=cones.W.shape[1])
  batch, (K, m, d) = X.shape[:-1], cones.W.shape
  flat = X.reshape(-1, m)
  if flat.shape[0] == 0:
    empty = lambda dtype, *shape: jnp.zeros(batch + (K,) + shape, dtype)
    return _nnls.NNLSResult(empty(X.dtype, d), empty(jnp.int32), empty(X.dtype), empty(bool))
  # Scale-safe (each sample and each cone solved at unit scale) and NaN-propagating.
  out = _nnls.solve_dictionary(cones.W, flat, cones.mu_h, jnp.zeros((flat.shape[0], K, d),
                                                                    flat.dtype),
                               None if weights is None else weights.reshape(-1, m),
                               solver=solver, batch_size=batch_size,
                               differentiation=differentiation, penalty=penalty)
  out = _nnls.NNLSResult(*(x.reshape(batch + x.shape[1:]) for x in out))
  _nnls.report(out, where, cones.mu_h if penalty == "absolute" else None, stacklevel=4)
  return out


def beta_of(cones, beta_loss) -> float:
  """The beta to code under: ``beta_loss``'s, or for None the cones' own (the
  ``settings["beta_loss"]`` that ``fit_cones`` records; 2, Frobenius, when none is)."""
  if beta_loss is None:
    beta_loss = dict(cones.settings).get("beta_loss", "frobenius") if isinstance(
        cones, Cones) else "frobenius"
  return _nmf_checks.beta_float(beta_loss)


def _solve_beta(cones: Cones, X, beta, options, where, weights=None):
  """Codes (..., K, d) and distances (..., K) of (checked) X under D_beta, weighted by the
  entry weights (..., m) if any."""
  max_iter, tol = _divergence.multiplicative_options(beta, options, where)
  _divergence.check_data(X, "X", beta, weighted=weights is not None)
  batch, (K, m, d) = X.shape[:-1], cones.W.shape
  flat = X.reshape(-1, m)
  if flat.shape[0] == 0:
    return jnp.zeros(batch + (K, d), X.dtype), jnp.zeros(batch + (K,), X.dtype)
  widths = jnp.asarray(cones.ranks, X.dtype)
  H, D, converged = _divergence.cone_codes(cones.W, flat, cones.mu_h, widths, None if weights
                                           is None else weights.reshape(-1, m), beta=beta,
                                           max_iter=max_iter, tol=tol)
  solvers.warn_if_not_converged(types.SimpleNamespace(converged=converged), where, stacklevel=4)
  return H.reshape(batch + (K, d)), D.reshape(batch + (K,))


def codes(cones: Cones, X, *, beta_loss=None, weights=None, missing: str | None = None,
          **options) -> jax.Array:
  """Sparse codes of every sample on every cone: (..., K, d).

  Options (keyword-only, shared by ``project``, ``distance``, ``log_likelihood``,
  ``predict``, ``predict_proba`` and ``score``): ``solver`` ("auto", the exact active-set
  solver, by default; see ``conejax.nnls``), ``max_iter``, ``tol``, ``batch_size``,
  ``penalty`` and ``differentiation``: differentiable with respect to X, ``cones.W`` and
  ``cones.mu_h``, "implicit" (KKT conditions of the solution) or "unroll" (exactly
  ``max_iter`` APG steps). ``distance`` and the functions built on it also take an
  operator ``A`` (and ``per_sample_operator``) to score observations v = A u.

  ``beta_loss`` (shared by all of them): None codes under the cones' own loss (the
  ``beta_loss`` that ``fit_cones`` recorded; Frobenius when none is), or a loss as in
  ``conejax.nmf``. Under a beta-divergence the code on cone k is ``conejax.nmf_codes(W_k,
  X, mu_h=cones.mu_h, beta_loss=...)``'s, argmin_{h >= 0} D_beta(x | W_k h) + mu_h sum(h)
  by multiplicative updates (the K cones in one compiled computation, each started at
  sqrt(mean(X) / d_k) and stopped by the relative decrease of its objective over the batch,
  as ``nmf_codes``); only ``max_iter`` (default 200) and ``tol`` (1e-5) apply, X must be
  non-negative (positive for beta <= 0), and it is not reverse-differentiable.

  Missing values (``weights`` and ``missing``, shared by all of them, as in ``conejax.nmf``):
  weights (..., m) of the entries of X in [0, 1] (0 = missing), and/or ``missing="nan"``
  (NaN entries get weight 0). A sample is coded on its observed entries, h_k =
  argmin_{h >= 0} 0.5 sum_j M_j (x - W_k h)_j^2 + mu_h sum(h): the NNLS through
  diag(sqrt(M)), on its own Gram W_k^T diag(M) W_k (exact; m d^2 work per sample and cone),
  or under a beta-divergence sum_j M_j d_beta(x_j | (W_k h)_j) + mu_h sum(h) (M inside the
  updates). All-ones weights give the unweighted codes, and ``project`` fills the missing
  entries in. Outside jit bad weights (not X's shape, outside [0, 1], NaN) and NaN in X
  without ``missing="nan"`` raise ValueErrors; under jit they make the results NaN.
  """
  beta = beta_of(cones, beta_loss)
  X, weights = _check_entries(cones, X, weights, missing, beta)
  if beta != 2:
    return _solve_beta(cones, X, beta, options, "codes", weights)[0]
  return _solve(cones, X, "codes", weights, **options).h


def project(cones: Cones, X, *, beta_loss=None, weights=None, missing: str | None = None,
            **options) -> jax.Array:
  """Projections W_k h_k(x) of every sample on every cone: (..., K, m); with ``weights`` or
  ``missing`` (see ``codes``) the codes of the observed entries, so the missing ones are
  imputed."""
  H = codes(cones, X, beta_loss=beta_loss, weights=weights, missing=missing, **options)
  return jnp.einsum("...kd,kmd->...km", H, cones.W, precision=_HIGHEST)


def sqrt_weights(weights):
  """sqrt(M) for entry weights M (zero gradient at 0; NaN stays NaN), or None for None."""
  if weights is None:
    return None
  positive = weights > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, weights, 1)), weights)


def _weighted_norm(R, weights):
  """||sqrt(M) r|| over the last axis (M the weights, broadcast to R; None: ||r||)."""
  return _safe_norm(R if weights is None else sqrt_weights(weights) * R)


@jax.jit
def _residual_norms(W, X, H, weights=None):
  """||x - W_k h_k|| for (K, m, d) W, (B, m) X, (B, K, d) H, one cone at a time: (B, K);
  with (B, m) entry weights M, the misfit on the observed entries ||sqrt(M) (x - W_k h_k)||."""
  def one_cone(args):
    W_k, H_k = args
    return _weighted_norm(X - jnp.dot(H_k, W_k.T, precision=_HIGHEST), weights)
  return lax.map(one_cone, (W, jnp.moveaxis(H, -2, 0))).T


_RECONSTRUCT_OPTIONS = ("solver", "max_iter", "tol", "batch_size", "differentiation",
                        "chunk_size")


def _operator_distance(cones: Cones, V, A, per_sample_operator, options, beta, weights,
                       missing):
  """||v - A W_k h_k|| with h_k the code of v on cone(A W_k), by ``reconstruct``: (..., K);
  sqrt(2 D_beta(v | A W_k h_k)) under a beta-divergence; with entry weights of v, both
  on its observed entries."""
  from conejax import _inverse  # _inverse builds on Cones: imported here, not at the top

  penalty = options.pop("penalty", "absolute")
  if penalty != "absolute":
    raise ValueError(f"penalty={penalty!r} is not available with an operator A; pass "
                     "penalty='absolute' (mu_h is the cones' own weight).")
  unknown = sorted(set(options) - set(_RECONSTRUCT_OPTIONS))
  if unknown:
    raise TypeError(f"distance got unexpected options {unknown}; with an operator A the "
                    f"options are {_RECONSTRUCT_OPTIONS}.")
  V = _checks.as_float_array(V, "X").astype(cones.W.dtype)
  if weights is not None or missing is not None:
    V, _, weights = _nmf_checks.check_loss(V, beta, weights, missing, name="X")
  if per_sample_operator:
    if V.ndim not in (1, 2):
      raise ValueError(f"X must have shape (N, k) or (k,) with one operator per sample; got "
                       f"{tuple(V.shape)}.")
    flat = V
  else:
    if V.ndim < 1:
      raise ValueError("X must have shape (..., k), samples as rows; got a scalar.")
    flat = V.reshape(-1, V.shape[-1])
  if flat.ndim == 2 and flat.shape[0] == 0:
    return jnp.zeros(V.shape[:-1] + (cones.n_classes,), V.dtype)
  weights = None if weights is None else weights.reshape(flat.shape)
  out = _inverse.reconstruct(cones, flat, A, select="each", weights=weights,
                             per_sample_operator=per_sample_operator, beta_loss=beta, **options)
  if beta != 2:
    return _divergence.distance_of(out.misfit).reshape(V.shape[:-1] + (cones.n_classes,))
  D = _observed_residual_norms(A, out.u, flat, weights,
                               per_sample=per_sample_operator and flat.ndim == 2)
  return D.reshape(V.shape[:-1] + (cones.n_classes,))


@functools.partial(jax.jit, static_argnames="per_sample")
def _observed_residual_norms(A, U, V, weights=None, *, per_sample):
  """||v - A u_k|| for estimates U (..., K, m) of observations V (..., k): (..., K); with
  entry weights M of V, ||sqrt(M) (v - A u_k)||."""
  if per_sample:
    AU = jax.vmap(lambda A_i, U_i: jax.vmap(A_i.mv)(U_i))(A, U)
  else:
    AU = jax.vmap(A.mv)(U.reshape(-1, U.shape[-1])).reshape(U.shape[:-1] + (V.shape[-1],))
  return _weighted_norm(AU - V[..., None, :], None if weights is None else weights[..., None, :])


def distance(cones: Cones, X, *, A=None, per_sample_operator: bool = False, beta_loss=None,
             weights=None, missing: str | None = None, **options) -> jax.Array:
  """Distances D_k(x) = ||x - P_k(x)|| of every sample to every cone: (..., K).

  With an operator ``A`` (``conejax.operators``, from the cones' signals (m,) to
  observations (k,)), X holds observations v = A u + noise of shape (..., k) and the
  distance to cone k is the misfit of v on cone(A W_k): ||v - A W_k h_k|| with
  h_k = argmin_{h >= 0} 0.5 ||A W_k h - v||^2 + mu_h sum(h), solved by
  ``conejax.reconstruct`` (select="each"), so cones trained on clean data classify
  blurred, downsampled, masked or compressively sensed data. ``per_sample_operator=True``
  takes one operator per sample (its leaves carry the sample axis N; X is (N, k)), as in
  ``reconstruct``. ``predict``, ``predict_proba``, ``log_likelihood``, ``score`` and
  ``calibrate`` take the same ``A`` and ``per_sample_operator`` keywords.

  Under a beta-divergence (``beta_loss``, None for the cones' own, see ``codes``) the
  distance is D_k(x) = sqrt(2 D_beta(x | W_k h_k)) with the code h_k of ``codes`` (for
  beta = 2 exactly ||x - W_k h_k||), so exp(-D_k^2) = exp(-2 D_beta) stays the likelihood;
  with an operator, sqrt(2 D_beta(v | A W_k h_k)) with the codes of ``reconstruct``.

  With ``weights`` M (or ``missing="nan"``, see ``codes``) the distance of a partially
  observed sample is its misfit on the observed entries, D_k(x) = ||sqrt(M) (x - W_k h_k)||
  with the weighted code h_k of ``codes`` (sqrt(2 sum_j M_j d_beta) under a beta-divergence;
  with an operator, M weighs the observations v: ||sqrt(M) (v - A W_k h_k)||). Samples with
  fewer observed entries have smaller distances, so compare cones for one sample (as
  ``predict`` does), not samples with different masks.

  Args:
    cones: ``Cones`` (K, m, d).
    X: (..., m) samples, or (..., k) observations when A is given.
    A: None (the samples themselves) or an operator from (m,) to (k,).
    per_sample_operator: whether A holds one operator per sample.
    beta_loss: None (the cones' own loss) or a loss as in ``conejax.nmf``.
    weights: None, or entry weights in [0, 1] of X's shape (0 = missing; see ``codes``).
    missing: None, or "nan": NaN entries of X are missing (weight 0).
    **options: as in ``codes``; with A, ``solver``, ``max_iter``, ``tol``, ``batch_size``,
      ``differentiation`` and ``chunk_size`` as in ``reconstruct`` (``penalty`` must be
      "absolute").

  Raises:
    ValueError: on shape mismatch (X against A's output, A's input against the atoms),
      non-finite data (NaN is allowed with ``missing="nan"``), weights not of X's shape or
      outside [0, 1], or an option that does not apply.

  Example:
    >>> import jax.numpy as jnp, conejax
    >>> from conejax import operators
    >>> cones = conejax.make_cones(jnp.eye(4)[None, :, :2])
    >>> A = operators.subsample(jnp.array([0, 3]), 4)   # observe pixels 0 and 3
    >>> conejax.distance(cones, jnp.array([1.0, 2.0]), A=A).tolist()
    [2.0]
  """
  beta = beta_of(cones, beta_loss)
  if A is not None:
    return _operator_distance(cones, X, A, bool(per_sample_operator), dict(options), beta,
                              weights, missing)
  if per_sample_operator:
    raise ValueError("per_sample_operator=True needs an operator A (one per sample).")
  X, weights = _check_entries(cones, X, weights, missing, beta)
  if beta != 2:
    return _solve_beta(cones, X, beta, options, "distance", weights)[1]
  H, (batch, m) = _solve(cones, X, "distance", weights, **options).h, (X.shape[:-1], X.shape[-1])
  flat = _residual_norms(cones.W, X.reshape(-1, m), H.reshape(-1, *H.shape[-2:]),
                         None if weights is None else weights.reshape(-1, m))
  return flat.reshape(batch + (cones.n_classes,))


def check_temperature(temperature):
  if jnp.ndim(temperature) != 0:
    raise ValueError(f"temperature must be a scalar > 0; got shape {jnp.shape(temperature)}.")
  if _checks.is_concrete(temperature) and not (np.isfinite(float(temperature)) and float(temperature) > 0):
    raise ValueError(f"temperature must be a finite number > 0; got {float(temperature)}.")
  return jnp.asarray(temperature)


def log_likelihood(cones: Cones, X, temperature=1.0, **options) -> jax.Array:
  """Unnormalised log-likelihoods -D_k(x)^2 / temperature: (..., K).

  ``options`` as in ``distance``, including an operator ``A`` for observations v = A u.
  """
  temperature = check_temperature(temperature)
  return -distance(cones, X, **options) ** 2 / temperature


def predict_proba(cones: Cones, X, temperature=1.0, **options) -> jax.Array:
  """Class probabilities softmax(-D^2 / temperature) over the cones: (..., K).

  Computed from the differences D_k^2 - D_min^2 = (D_k - D_min)(D_k + D_min), so that
  distances whose squares leave the float range still give the right one-hot answer. A
  sample with NaN or Inf gets NaN probabilities (under jit; outside jit it is rejected).
  ``options`` as in ``distance``, including an operator ``A`` for observations v = A u;
  ``calibrate`` fits the temperature.
  """
  temperature = check_temperature(temperature)
  D = distance(cones, X, **options)
  nearest = jnp.min(D, axis=-1, keepdims=True)
  logits = -((D - nearest) * (D + nearest)) / temperature
  return jax.nn.softmax(logits, axis=-1)


_NOT_UNDER_JIT = ("Under jit, use jnp.argmin(conejax.distance(cones, X), axis=-1), the index "
                  "of the nearest cone (labels: cones.classes), which is jit-able.")


def predict(cones: Cones, X, **options) -> np.ndarray:
  """The label of the nearest cone for every sample: (...), as a numpy array.

  The projections are exact by default (``solver="auto"``); ``options`` as in ``codes``.
  Not under ``jit`` (labels may be strings and the result is numpy): there, use
  ``jnp.argmin(distance(cones, X), axis=-1)``, the index into ``cones.classes``.

  Raises:
    TypeError: if called with traced arrays (inside ``jit``, ``vmap`` or ``grad``).
  """
  _checks.require_concrete("predict", _NOT_UNDER_JIT, X=X, W=cones.W)
  nearest = np.asarray(jnp.argmin(distance(cones, X, **options), axis=-1))
  return np.asarray(cones.classes)[nearest]


def score(cones: Cones, X, y, **options) -> float:
  """Accuracy of ``predict`` against the labels y (...); not under ``jit`` (as ``predict``)."""
  _checks.require_concrete("score", _NOT_UNDER_JIT + " Compare it with the label indices.",
                           X=X, y=y, W=cones.W)
  y = np.asarray(y)
  predicted = predict(cones, X, **options)
  if predicted.shape != y.shape:
    raise ValueError(f"y has shape {y.shape} but X holds {predicted.shape} samples; pass one "
                     "label per sample.")
  return float(np.mean(predicted == y))
