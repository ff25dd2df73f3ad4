"""The scikit-learn estimators: scikit-learn's own estimator checks, and in its tools."""

import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.decomposition import NMF
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

import conejax
from conejax.sklearn import ConeClassifier, ConeNMF
from helpers import scipy_nnls

# The checks fit many tiny problems of new shapes: APG compiles far faster than the exact
# active set, and the tolerance is tight enough for the checks' comparisons.
FAST = dict(solver=conejax.solvers.APG(tol=1e-12, max_iter=20_000))


def expected_failures(estimator):
  """Checks that fail by design, with the reason."""
  if isinstance(estimator, ConeClassifier):
    return {"check_decision_proba_consistency":
            "fits make_blobs data with negative values without applying the positive_only "
            "tag; cones (NMF) need non-negative data and reject it with a ValueError"}
  return {}


@parametrize_with_checks([ConeClassifier(rank=2, max_iter=5, random_state=0, **FAST),
                          ConeNMF(n_components=2, max_iter=50, random_state=0, **FAST)],
                         expected_failed_checks=expected_failures)
def test_scikit_learn_estimator_checks(estimator, check):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # rank capped on the checks' tiny data
    check(estimator)


@pytest.fixture(scope="module")
def digits():
  X, y = load_digits(return_X_y=True)
  return X[:600], y[:600], X[600:900], y[600:900]


def test_classifier_on_digits_and_its_attributes(digits):
  X, y, X_test, y_test = digits
  model = ConeClassifier(rank=8, random_state=0).fit(X, y)
  assert model.score(X_test, y_test) > 0.93
  np.testing.assert_array_equal(model.classes_, np.arange(10))
  assert model.n_features_in_ == 64 and model.components_.shape == (10, 64, 8)
  proba = model.predict_proba(X_test)
  np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-12)
  np.testing.assert_array_equal(model.classes_[proba.argmax(1)], model.predict(X_test))
  # The same answers as the functional API on the same cones.
  D = np.asarray(conejax.distance(model.cones_, X_test.astype(np.float32)))
  np.testing.assert_array_equal(model.predict(X_test.astype(np.float32)), D.argmin(1))
  D2 = model._distances(X_test) ** 2
  np.testing.assert_allclose(model.decision_function(X_test), D2.min(1, keepdims=True) - D2,
                             atol=1e-9 * D2.max())


def test_string_labels_and_binary_decision_function(digits):
  X, y, X_test, _ = digits
  keep = y < 2
  labels = np.where(y[keep] == 0, "zero", "one")
  model = ConeClassifier(rank=4, random_state=0).fit(X[keep], labels)
  assert set(model.predict(X_test)) <= {"zero", "one"}
  score = model.decision_function(X_test)
  assert score.shape == (len(X_test),)
  np.testing.assert_array_equal(model.classes_[(score > 0).astype(int)], model.predict(X_test))


def test_float64_in_float64_float32_in_float32(digits):
  X, y, X_test, _ = digits
  for dtype in (np.float64, np.float32):
    model = ConeClassifier(rank=4, random_state=0).fit(X.astype(dtype), y)
    assert model.components_.dtype == dtype
    assert model.predict_proba(X_test.astype(dtype)).dtype == dtype
    nmf = ConeNMF(n_components=5, random_state=0)
    assert nmf.fit_transform(X.astype(dtype)).dtype == dtype
    assert nmf.transform(X_test.astype(dtype)).dtype == dtype


def test_nmf_matches_scikit_learn_and_transform_is_the_exact_nnls(digits):
  X = digits[0]
  ours = ConeNMF(n_components=10, max_iter=400, tol=0, random_state=0).fit(X)
  theirs = NMF(n_components=10, init="nndsvda", solver="cd", max_iter=400, tol=0,
               random_state=0).fit(X)
  assert ours.components_.shape == theirs.components_.shape == (10, 64)
  # Both converge to a fit of about the same quality (NMF is not unique).
  assert ours.reconstruction_err_ <= 1.02 * theirs.reconstruction_err_
  H = ours.transform(digits[2])
  np.testing.assert_allclose(H, scipy_nnls(ours.components_.T, digits[2]), atol=1e-8)
  np.testing.assert_allclose(ours.inverse_transform(H), H @ ours.components_)


@pytest.mark.parametrize("beta_loss", ["kullback-leibler", "itakura-saito", 1.5])
def test_beta_losses_match_scikit_learn_multiplicative_updates(digits, beta_loss):
  """From the same init, the atoms of NMF(solver="mu") (conejax's are unit columns: the
  same atoms up to each one's scale), and scikit-learn's reconstruction error formula."""
  from sklearn.decomposition._nmf import _beta_divergence
  X = digits[0][:300] + (1.0 if beta_loss == "itakura-saito" else 0.0)  # IS needs X > 0
  rng = np.random.default_rng(0)
  W0, H0 = rng.random((64, 6)) + 0.1, rng.random((300, 6)) + 0.1
  ours = ConeNMF(n_components=6, beta_loss=beta_loss, init=(W0, H0), max_iter=60, tol=0)
  H = ours.fit_transform(X)
  theirs = NMF(n_components=6, beta_loss=beta_loss, solver="mu", init="custom", max_iter=60,
               tol=0).fit(X, W=H0.copy(), H=W0.T.copy())
  unit = lambda C: C / np.linalg.norm(C, axis=1, keepdims=True)
  np.testing.assert_allclose(unit(ours.components_), unit(theirs.components_), atol=1e-8)
  reference = _beta_divergence(X, H, ours.components_, beta_loss, square_root=True)
  np.testing.assert_allclose(ours.reconstruction_err_, reference, rtol=1e-10)
  np.testing.assert_allclose(H, conejax.nmf_codes(ours.components_.T, X, beta_loss=beta_loss,
                                                  max_iter=60, tol=0).H)


def test_partial_fit_streams(digits):
  X = digits[0]
  model = ConeNMF(n_components=6, random_state=0)
  errors = []
  for chunk in np.array_split(X, 6):
    model.partial_fit(chunk)
    errors.append(np.linalg.norm(X - model.inverse_transform(model.transform(X))))
  assert model.components_.shape == (6, 64) and model.n_iter_ == 6
  assert errors[-1] < errors[0]


def test_pickle_and_clone(digits):
  X, y, X_test, _ = digits
  model = ConeClassifier(rank=4, random_state=0).fit(X, y)
  again = pickle.loads(pickle.dumps(model))
  np.testing.assert_array_equal(again.predict_proba(X_test), model.predict_proba(X_test))
  fresh = clone(model)
  assert fresh.get_params() == model.get_params() and not hasattr(fresh, "components_")


def test_pipeline_grid_search_and_cross_validation(digits):
  X, y, _, _ = digits
  search = GridSearchCV(ConeClassifier(random_state=0), {"rank": [2, 8], "mu_h": [0.0, 1.0]},
                        cv=3).fit(X, y)
  assert search.best_params_["rank"] == 8
  scores = cross_val_score(ConeClassifier(rank=8, random_state=0), X, y, cv=3)
  assert scores.mean() > 0.9
  pipeline = make_pipeline(ConeNMF(n_components=16, random_state=0),
                           LogisticRegression(max_iter=2000))
  assert cross_val_score(pipeline, X, y, cv=3).mean() > 0.85


def test_errors_name_the_argument():
  X = np.abs(np.random.default_rng(0).standard_normal((20, 5)))
  with pytest.raises(ValueError, match="Negative values"):
    ConeNMF(n_components=2).fit(-X)
  with pytest.raises(ValueError, match="beta_loss must be"):
    ConeNMF(beta_loss="poisson").fit(X)
  with pytest.raises(ValueError, match="beta_loss must be"):
    ConeNMF(beta_loss="poisson").partial_fit(X)
  with pytest.raises(ValueError, match="rank must be a positive integer"):
    ConeClassifier(rank=0).fit(X, np.arange(20) % 2)
  with pytest.warns(UserWarning, match="n_components=9 is more than"):
    ConeNMF(n_components=9, random_state=0).fit(X)


def test_reexported_at_top_level():
  assert conejax.ConeClassifier is ConeClassifier and conejax.ConeNMF is ConeNMF
