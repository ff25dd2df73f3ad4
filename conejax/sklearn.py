"""scikit-learn estimators over conejax's functional API (as xgboost.sklearn and lightgbm ship).

- ``ConeClassifier``: one non-negative cone per class (``conejax.fit_cones``), prediction by
  the nearest cone, probabilities softmax(-D^2 / temperature).
- ``ConeNMF``: sparse NMF (``conejax.nmf``), codes of new data by the exact NNLS
  (``conejax.nnls``) under the same penalty, streaming updates by ``partial_fit``
  (``conejax.nmf_partial_fit``).

Both follow scikit-learn's conventions: samples are rows, hyper-parameters are constructor
arguments stored unchanged, fitted attributes end in ``_``, ``random_state`` (None, an int
or a ``numpy.random.RandomState``) is mapped to a JAX key. Input is validated by
scikit-learn (``validate_data``: finite, 2-D, at least one sample and feature) and must be
non-negative. dtypes: float64 input is computed in float64 (inside ``jax.enable_x64``, so
the estimators need no global JAX setting) and float32 input in float32; every other input
becomes float64. Outputs keep that dtype (``__sklearn_tags__`` says so). Fitted estimators
hold numpy arrays only, so they pickle and ``clone`` like any scikit-learn estimator.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_non_negative, validate_data

import conejax

FLOATS = [np.float64, np.float32]


def _key(random_state) -> jax.Array:
  """A JAX key from scikit-learn's random_state (a fresh one per fit for None)."""
  return jax.random.key(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _precision(X):
  """The context in which X's dtype is computed: float64 under ``jax.enable_x64``."""
  return jax.enable_x64(X.dtype == np.float64)


def _effective_rank(requested, limit, name, what):
  """min(requested, limit), with a warning naming the cap when it binds."""
  if requested > limit:
    warnings.warn(f"{name}={requested} is more than {what} ({limit}); using {limit}.",
                  UserWarning, stacklevel=3)
  return min(requested, limit)


def _check_positive_int(value, name):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer; got {value!r}.")
  return int(value)


class ConeClassifier(ClassifierMixin, BaseEstimator):
  """Nearest-cone classifier: one sparse-NMF cone per class.

  Args:
    rank: atoms per class (capped, with a warning, at the smallest class size and the
      number of features).
    mu_w, mu_h: L1 weights of the atoms and of the codes (``conejax.fit_cones``); mu_h is
      also the penalty of the projections.
    method, init, max_iter, tol: the NMF of each class, as in ``conejax.fit_cones``.
    temperature: of ``predict_proba``, softmax(-D^2 / temperature).
    solver: the NNLS solver of the projections ("auto": exact; see ``conejax.nnls``).
    random_state: None, an int or a ``numpy.random.RandomState``.

  Attributes:
    classes_: (K,) the labels, sorted.
    n_features_in_: m.
    components_: (K, m, rank_) the fitted dictionaries, atoms as columns (numpy).
    rank_: the rank used.
    n_iter_: (K,) iterations of each class's NMF.
    cones_: the fitted ``conejax.Cones`` (class k is ``classes_[k]``).

  Example:
    >>> from sklearn.datasets import load_digits
    >>> from conejax.sklearn import ConeClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> ConeClassifier(rank=10, random_state=0).fit(X[:1000], y[:1000]).score(
    ...     X[1000:], y[1000:]) > 0.9
    True
  """

  def __init__(self, rank: int = 16, *, mu_w: float = 0.0, mu_h: float = 0.0,
               method: str = "mu", init: str = "kmeans", max_iter: int = 20,
               tol: float = 1e-5, temperature: float = 1.0, solver="auto",
               random_state=None):
    self.rank = rank
    self.mu_w = mu_w
    self.mu_h = mu_h
    self.method = method
    self.init = init
    self.max_iter = max_iter
    self.tol = tol
    self.temperature = temperature
    self.solver = solver
    self.random_state = random_state

  def __sklearn_tags__(self):
    tags = super().__sklearn_tags__()
    tags.input_tags.positive_only = True
    # A cone of rank >= n_features spans the whole orthant: on scikit-learn's 2-feature
    # toy problems every distance is 0. Cones are for high-dimensional data.
    tags.classifier_tags.poor_score = True
    return tags

  def fit(self, X, y):
    """Fits one cone per class of y on the rows of X (non-negative)."""
    X, y = validate_data(self, X, y, dtype=FLOATS)
    check_non_negative(X, "ConeClassifier.fit")
    check_classification_targets(y)
    rank = _check_positive_int(self.rank, "rank")
    self.classes_, index, counts = np.unique(y, return_inverse=True, return_counts=True)
    self.rank_ = _effective_rank(rank, min(counts.min(), X.shape[1]), "rank",
                                 "the smallest class or the number of features")
    with _precision(X):
      cones = conejax.fit_cones(X, index, self.rank_, key=_key(self.random_state),
                              mu_w=self.mu_w, mu_h=self.mu_h, method=self.method,
                              init=self.init, max_iter=self.max_iter, tol=self.tol)
    self.components_ = np.asarray(cones.W)
    self.mu_h_ = float(np.asarray(cones.mu_h))
    self.n_iter_ = np.asarray(dict(cones.settings)["n_iter"])
    return self

  @property
  def cones_(self) -> conejax.Cones:
    check_is_fitted(self)
    return conejax.make_cones(self.components_, self.mu_h_)

  def _distances(self, X, return_X=False):
    check_is_fitted(self)
    X = validate_data(self, X, reset=False, dtype=FLOATS)
    check_non_negative(X, f"{type(self).__name__}.predict")
    with _precision(X):
      W = self.components_.astype(X.dtype)
      D = conejax.distance(conejax.make_cones(W, self.mu_h_), X, solver=self.solver)
      D = np.asarray(D, X.dtype)
    return (D, X) if return_X else D

  def _logits(self, X):
    """D_min^2 - D_k^2 per class (<= 0, 0 at the nearest cone), from the differences
    (D_k - D_min)(D_k + D_min), which stay finite where the squares would not.

    Differences below 64 eps ||x||^2 are rounding (D^2 <= ||x||^2 is formed to a few ulps
    of ||x||^2) and count as ties (0), so ``predict``, ``predict_proba`` and
    ``decision_function`` agree on them. (It was sqrt(eps) m max|x|^2 before: 0.27 on
    MNIST digits, where it tied true nearest cones and cost 0.35 points of accuracy.)
    """
    D, X = self._distances(X, return_X=True)
    nearest = D.min(axis=1, keepdims=True)
    logits = -(D - nearest) * (D + nearest)
    scale = np.max(np.abs(X), axis=1, keepdims=True)  # ||x||^2 at unit scale: no overflow
    unit = np.where(scale > 0, scale, 1)
    resolution = 64 * np.finfo(D.dtype).eps * np.sum((X / unit) ** 2, axis=1,
                                                      keepdims=True) * unit**2
    return np.where(logits > -resolution, 0, logits)

  def decision_function(self, X):
    """-D_k(x)^2 per class (n, K), shifted so the nearest cone scores 0; for two classes
    the score of classes_[1], D_0^2 - D_1^2."""
    logits = self._logits(X)
    return logits[:, 1] - logits[:, 0] if len(self.classes_) == 2 else logits

  def predict_proba(self, X):
    """softmax(-D^2 / temperature) over the classes (n, K)."""
    return self._softmax(self._logits(X))

  def _softmax(self, logits):
    p = np.exp((logits - logits.max(axis=1, keepdims=True)) / float(self.temperature))
    return p / p.sum(axis=1, keepdims=True)

  def predict_log_proba(self, X):
    return np.log(self.predict_proba(X))

  def predict(self, X):
    """The label of the nearest cone of every row of X (ties: the first class)."""
    nearest = np.argmax(self._logits(X), axis=1)
    return self.classes_[nearest]


class ConeNMF(TransformerMixin, BaseEstimator):
  """Sparse NMF X ~ H W^T with scikit-learn's ``NMF`` conventions.

  Minimises D_beta(X | H W^T) + mu_w |W|_1 + mu_h |H|_1 over W, H >= 0: the Frobenius
  loss 0.5 ||X - H W^T||_F^2 by default, or scikit-learn's other beta-divergences
  (``beta_loss="kullback-leibler"``, ``"itakura-saito"`` or a float) by multiplicative
  updates, as ``NMF(solver="mu")``.

  Args:
    n_components: atoms d; None is the number of features (capped, with a warning, at
      min(n_samples, n_features)).
    beta_loss: "frobenius" (2), "kullback-leibler" (1), "itakura-saito" (0) or a float.
    mu_w, mu_h: L1 weights of the atoms and the codes; mu_h is also the penalty of
      ``transform``.
    init, method, max_iter, tol: as in ``conejax.nmf`` (method None: HALS for the
      Frobenius loss, multiplicative updates otherwise).
    solver: the NNLS solver of ``transform`` for the Frobenius loss ("auto": exact);
      other losses code by ``conejax.nmf_codes`` (max_iter, tol).
    forget: ``partial_fit``'s discount of past chunks (``conejax.nmf_partial_fit``).
    random_state: None, an int or a ``numpy.random.RandomState``.

  Attributes:
    components_: (n_components_, n_features) the atoms as rows (W^T), as scikit-learn's.
    n_components_: the rank used.
    reconstruction_err_: sqrt(2 D_beta(X | H W^T)) of the training data (||X - H W^T||_F
      for the Frobenius loss), as scikit-learn's, H the codes that ``fit_transform``
      returns (exact for the Frobenius loss).
    n_iter_: iterations run.
    n_features_in_: n_features.
  """

  def __init__(self, n_components: int | None = None, *, beta_loss="frobenius",
               mu_w: float = 0.0, mu_h: float = 0.0, init="nndsvda", method: str | None = None,
               max_iter: int = 200, tol: float = 1e-5, solver="auto", forget: float = 0.5,
               random_state=None):
    self.n_components = n_components
    self.beta_loss = beta_loss
    self.mu_w = mu_w
    self.mu_h = mu_h
    self.init = init
    self.method = method
    self.max_iter = max_iter
    self.tol = tol
    self.solver = solver
    self.forget = forget
    self.random_state = random_state

  def __sklearn_tags__(self):
    tags = super().__sklearn_tags__()
    tags.input_tags.positive_only = True
    tags.transformer_tags.preserves_dtype = ["float64", "float32"]
    return tags

  def _frobenius(self) -> bool:
    return isinstance(self.beta_loss, str) and self.beta_loss == "frobenius" or (
        not isinstance(self.beta_loss, (str, bool)) and self.beta_loss == 2)

  def _rank(self, X):
    n, m = X.shape
    requested = m if self.n_components is None else _check_positive_int(
        self.n_components, "n_components")
    return _effective_rank(requested, min(n, m), "n_components",
                           "min(n_samples, n_features)")

  def fit_transform(self, X, y=None):
    """Fits W and returns the codes H (n, n_components_) of X."""
    X = validate_data(self, X, dtype=FLOATS)
    check_non_negative(X, "ConeNMF (input X)")
    self.n_components_ = self._rank(X)
    with _precision(X):
      fit = conejax.nmf(X, self.n_components_, key=_key(self.random_state), mu_w=self.mu_w,
                     mu_h=self.mu_h, method=self.method, init=self.init,
                     max_iter=self.max_iter, tol=self.tol, beta_loss=self.beta_loss)
      self.components_ = np.asarray(fit.W, X.dtype).T
    self.n_iter_ = int(fit.n_iter)
    self._stream = None
    # The codes of the final atoms, exactly (the fit's H is one update behind them), so
    # fit_transform(X) equals fit(X).transform(X).
    H = self.transform(X)
    with _precision(X):
      divergence = conejax.nmf_objective(X, self.components_.T, H, beta_loss=self.beta_loss)
    self.reconstruction_err_ = float(np.sqrt(2 * max(float(divergence), 0.0)))
    return H

  def fit(self, X, y=None):
    self.fit_transform(X)
    return self

  def transform(self, X):
    """The codes of X on the fitted atoms: argmin_{h >= 0} D_beta(x | W h) + mu_h sum(h)
    (for the Frobenius loss the exact NNLS of 0.5 ||W h - x||^2 + mu_h sum(h))."""
    check_is_fitted(self)
    X = validate_data(self, X, reset=False, dtype=FLOATS)
    check_non_negative(X, "ConeNMF.transform")
    with _precision(X):
      W = self.components_.T.astype(X.dtype)
      if self._frobenius():
        return np.asarray(conejax.nnls(W, X, self.mu_h, solver=self.solver).h, X.dtype)
      out = conejax.nmf_codes(W, X, mu_h=self.mu_h, beta_loss=self.beta_loss,
                              max_iter=self.max_iter, tol=self.tol)
      return np.asarray(out.H, X.dtype)

  def inverse_transform(self, X):
    """H W^T: the data that codes X (n, n_components_) stand for."""
    check_is_fitted(self)
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != self.components_.shape[0]:
      raise ValueError(f"X must have shape (n, {self.components_.shape[0]}) (codes); got "
                       f"{X.shape}.")
    return X @ self.components_

  def partial_fit(self, X, y=None):
    """One streaming step on the chunk X (``conejax.nmf_partial_fit``).

    The first call starts from this chunk (``conejax.nmf_minibatch_init``) and fixes
    n_components_, n_features_in_ and the loss (``beta_loss``, streamed by multiplicative
    updates when it is not the Frobenius loss); ``fit`` starts over.
    """
    first = getattr(self, "_stream", None) is None
    X = validate_data(self, X, reset=first, dtype=FLOATS)
    check_non_negative(X, "ConeNMF.partial_fit")
    with _precision(X):
      if first:
        self.n_components_ = self._rank(X)
        init = self.init if self.init in ("nndsvda", "random", "kmeans") else "nndsvda"
        state = conejax.nmf_minibatch_init(_key(self.random_state), X,
                                              self.n_components_, init=init,
                                              beta_loss=self.beta_loss)
      else:
        state = jax.tree.map(lambda a: jax.numpy.asarray(a), self._stream)
      state = conejax.nmf_partial_fit(state, X, mu_w=self.mu_w, mu_h=self.mu_h,
                                         forget=self.forget, beta_loss=self.beta_loss)
      self._stream = jax.tree.map(np.asarray, state)
    self.components_ = np.asarray(state.W, X.dtype).T
    self.n_iter_ = int(np.asarray(state.n_chunks))
    return self
