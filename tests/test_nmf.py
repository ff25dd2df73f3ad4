"""Sparse NMF: monotone objective, parity with scikit-learn, per-class batching, validation."""

import warnings

import jax
import numpy as np
import pytest
from sklearn.decomposition import NMF

import conejax
from conejax import _nmf, _nmf_init
from helpers import mnist_train

KEY = jax.random.key(0)


def _random_data(seed, n=40, m=15, dtype=np.float64):
  rng = np.random.default_rng(seed)
  return (rng.random((n, 4)) @ rng.random((4, m)) + 0.1 * rng.random((n, m))).astype(dtype)


def _custom_init(U, rank, seed=0):
  rng = np.random.default_rng(seed)
  scale = np.sqrt(U.mean() / rank)
  return (scale * rng.random((U.shape[1], rank))).astype(U.dtype), (
      scale * rng.random((U.shape[0], rank))).astype(U.dtype)


@pytest.mark.parametrize("method", ["mu", "hals", "anls"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_objective_never_increases(method, dtype):
  U = _random_data(0, dtype=dtype)
  fit = conejax.nmf(U, 5, key=KEY, method=method, init="random", max_iter=60, tol=0,
                    inner_iter=500 if method == "anls" else None)
  history = np.asarray(fit.objective, np.float64)
  # The history comes from the statistics (U^T H, H^T H), so its rounding error is a few
  # eps times ||U||^2, not times the objective.
  slack = (1e-6 if dtype == np.float32 else 1e-13) * np.sum(U.astype(np.float64) ** 2)
  assert np.all(np.diff(history) <= slack)
  assert history[-1] < 0.5 * history[0]


@pytest.mark.parametrize("method", ["mu", "hals", "anls"])
def test_history_matches_the_direct_objective(method):
  U = _random_data(1)
  fit = conejax.nmf(U, 4, key=KEY, method=method, mu_w=0.01, mu_h=0.02, max_iter=30, tol=0)
  direct = conejax.nmf_objective(U, fit.W, fit.H, 0.01, 0.02)
  np.testing.assert_allclose(fit.objective[-1], direct, rtol=1e-9)


@pytest.mark.parametrize("method, solver", [("mu", "mu"), ("hals", "cd")])
def test_no_worse_than_scikit_learn_from_the_same_init(method, solver):
  U, _ = mnist_train(400)
  W0, H0 = (np.asarray(x) for x in _nmf_init.nndsvda_init(KEY, U, 16, np.ones(400, U.dtype)))
  fit = conejax.nmf(U, 16, key=KEY, method=method, init=(W0, H0), max_iter=200, tol=0)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    reference = NMF(16, init="custom", solver=solver, max_iter=200, tol=0)
    codes = reference.fit_transform(U, W=H0.copy(), H=W0.T.copy())
  theirs = 0.5 * np.sum((U.astype(np.float64) - codes @ reference.components_) ** 2)
  ours = conejax.nmf_objective(U.astype(np.float64), fit.W, fit.H)
  assert ours <= theirs * (1 + 1e-4)
  np.testing.assert_allclose(ours, theirs, rtol=2e-3)  # the same algorithm, not a lucky one


@pytest.mark.parametrize("method, solver", [("mu", "mu"), ("hals", "cd")])
def test_iterates_match_scikit_learn_in_float64(method, solver):
  U = _random_data(2)
  W0, H0 = _custom_init(U, 4)
  fit = conejax.nmf(U, 4, key=KEY, method=method, init=(W0, H0), max_iter=25, tol=0)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    reference = NMF(4, init="custom", solver=solver, max_iter=25, tol=0)
    codes = reference.fit_transform(U, W=H0.copy(), H=W0.T.copy())
  np.testing.assert_allclose(np.asarray(fit.H) @ np.asarray(fit.W).T,
                             codes @ reference.components_, rtol=1e-8, atol=1e-10)


def test_sparse_codes_with_mu_h():
  U = _random_data(3)
  plain = conejax.nmf(U, 6, key=KEY, max_iter=100)
  sparse = conejax.nmf(U, 6, key=KEY, mu_h=1.0, mu_w=0.1, max_iter=100)
  assert np.mean(sparse.H == 0) > np.mean(plain.H == 0) + 0.1


def test_atoms_have_unit_norm_without_penalties():
  U = _random_data(4)
  fit = conejax.nmf(U, 4, key=KEY, max_iter=20)
  np.testing.assert_allclose(np.linalg.norm(fit.W, axis=0), 1.0, rtol=1e-12)


def test_tolerance_stops_early_and_pads_the_history():
  U = _random_data(5)
  fit = conejax.nmf(U, 4, key=KEY, max_iter=500, tol=1e-4)
  n = int(fit.n_iter)
  assert 1 < n < 500
  history = np.asarray(fit.objective)
  assert np.all(history[n:] == history[n - 1])
  assert (history[n - 2] - history[n - 1]) < 1e-4 * history[n - 2]


@pytest.mark.parametrize("method, init, loss", [
    ("mu", "random", {}), ("hals", "nndsvda", {}), ("anls", "nndsvda", {}), ("mu", "kmeans", {}),
    ("mu", "random", dict(beta_loss="kullback-leibler")),
    ("mu", "nndsvda", dict(beta_loss="itakura-saito", weights=True)),
])
def test_per_class_equals_one_class_at_a_time(method, init, loss):
  rng = np.random.default_rng(6)
  X = np.concatenate([_random_data(s, n=n) for s, n in [(7, 30), (8, 45), (9, 12)]])
  y = np.repeat(np.array([5, 2, 9]), [30, 45, 12])
  perm = rng.permutation(len(y))
  X, y = X[perm], y[perm]
  weights = rng.random(X.shape) * (rng.random(X.shape) > 0.3) if loss.pop("weights", 0) else None
  options = dict(rank=3, method=method, init=init, max_iter=25, tol=0, **loss)
  batched = conejax.nmf_per_class(X, y, key=KEY, weights=weights, **options)
  np.testing.assert_array_equal(batched.classes, [2, 5, 9])
  keys = jax.random.split(KEY, 3)
  for k, label in enumerate(batched.classes):
    alone = conejax.nmf(X[y == label], key=keys[k], **options,
                        weights=None if weights is None else weights[y == label])
    np.testing.assert_allclose(batched.W[k], alone.W, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(batched.H[y == label], alone.H, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(batched.objective[k], alone.objective, rtol=1e-9)


def test_per_class_exact_codes_only_change_h():
  # With unit atoms, H becomes the exact codes on the final atoms (the projection's codes);
  # exact_codes=False (fit_cones needs only W) skips that solve and leaves W as it is.
  X = _random_data(10, n=60)
  y = np.arange(60) % 3
  options = dict(key=KEY, mu_h=0.1, max_iter=10, unit_atoms=True)
  exact = conejax.nmf_per_class(X, y, 3, **options)
  last = conejax.nmf_per_class(X, y, 3, exact_codes=False, **options)
  np.testing.assert_array_equal(last.W, exact.W)
  for k, label in enumerate(exact.classes):
    codes = conejax.codes(conejax.make_cones(exact.W[k], 0.1), X[y == label])[:, 0]
    np.testing.assert_allclose(exact.H[y == label], codes, atol=1e-9)
  assert np.all(np.asarray(last.H) >= 0) and np.max(np.abs(last.H - exact.H)) > 1e-6


def test_per_class_vmapped_equals_sequential():
  X = _random_data(10, n=60)
  y = np.arange(60) % 3
  one = conejax.nmf_per_class(X, y, 3, key=KEY, max_iter=10)
  all_at_once = conejax.nmf_per_class(X, y, 3, key=KEY, max_iter=10, class_batch_size=3)
  np.testing.assert_allclose(one.W, all_at_once.W, rtol=1e-9, atol=1e-12)


def test_kmeans_finds_separated_clusters_and_ignores_masked_rows():
  rng = np.random.default_rng(13)
  means = np.array([[5.0, 0, 0, 1], [0, 5.0, 0, 1], [0, 0, 5.0, 1]])
  U = np.concatenate([m + 0.1 * rng.random((20, 4)) for m in means])
  padded = np.concatenate([U, 100 * np.ones((7, 4))])
  mask = np.concatenate([np.ones(60), np.zeros(7)])
  centers = np.asarray(_nmf_init.kmeans(KEY, padded, 3, mask))
  order = np.argsort(np.argmax(centers[:, :3], axis=1))
  expected = np.stack([U[20 * i:20 * (i + 1)].mean(axis=0) for i in range(3)])
  np.testing.assert_allclose(centers[order], expected, rtol=1e-10)
  alone = np.asarray(_nmf_init.kmeans(KEY, U, 3, np.ones(60)))
  np.testing.assert_allclose(alone, centers, rtol=1e-12)


def test_kmeans_init_gives_nonnegative_positive_codes():
  U = _random_data(14)
  W, H = _nmf_init.kmeans_init(KEY, U, 4, np.ones(len(U)))
  assert np.all(np.asarray(W) >= 0) and np.all(np.asarray(H) > 0)


def test_randomized_svd_matches_numpy():
  U, _ = mnist_train(300, np.float64)
  _, s, right = _nmf_init.randomized_svd(KEY, U, 10)
  exact = np.linalg.svd(U, full_matrices=False)
  np.testing.assert_allclose(s, exact[1][:10], rtol=1e-6)
  np.testing.assert_allclose(np.abs(np.sum(right * exact[2][:10].T, axis=0)), 1, atol=1e-4)


def test_nndsvda_matches_scikit_learn_given_the_same_svd(monkeypatch):
  from sklearn.decomposition import _nmf as sklearn_nmf
  U, _ = mnist_train(300, np.float64)
  left, s, right = (np.asarray(x) for x in _nmf_init.randomized_svd(KEY, U, 8))
  name = "_randomized_svd" if hasattr(sklearn_nmf, "_randomized_svd") else "randomized_svd"
  monkeypatch.setattr(sklearn_nmf, name, lambda *a, **k: (left, s, right.T))
  codes, atoms = sklearn_nmf._initialize_nmf(U, 8, init="nndsvda")
  W, H = _nmf_init.nndsvda_init(KEY, U, 8, np.ones(300))
  np.testing.assert_allclose(H, codes, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(W, atoms.T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept_and_jit_does_not_recompile(dtype):
  U = _random_data(11, dtype=dtype)
  first = conejax.nmf(U, 3, key=KEY, max_iter=5)
  assert first.W.dtype == dtype and first.H.dtype == dtype
  before = _nmf._nmf_jit._cache_size()
  conejax.nmf(U * 2, 3, key=jax.random.key(1), max_iter=5, mu_h=0.5)
  assert _nmf._nmf_jit._cache_size() == before


@pytest.mark.parametrize("kwargs, message", [
    (dict(U=-np.ones((5, 4))), "negative entries"),
    (dict(U=np.full((5, 4), np.nan)), "NaN or Inf"),
    (dict(U=np.ones((5, 4), np.int64)), "floating-point"),
    (dict(U=np.ones(5)), r"shape \(N, m\)"),
    (dict(rank=6), "rank 6 exceeds min"),
    (dict(rank=0), "rank must be a positive integer"),
    (dict(mu_h=-0.1), "mu_h must be a finite number >= 0"),
    (dict(method="als"), "method must be one of"),
    (dict(init="svd"), "init must be one of"),
    (dict(init="kmeans", rank=5), "rank 5 exceeds min"),
    (dict(init=(np.ones((4, 2)), np.ones((5, 3)))), "init arrays must have shapes"),
    (dict(tol=-1.0), "tol must be"),
    # beta-divergences (tests/test_nmf_beta.py)
    (dict(beta_loss="kl"), "beta_loss must be one of"),
    (dict(beta_loss=np.inf), "beta_loss must be"),
    (dict(beta_loss="kullback-leibler", method="hals"), "needs method='mu'"),
    (dict(beta_loss=1.0, unit_atoms=True), "unit_atoms serves"),
    (dict(beta_loss="itakura-saito", U=np.eye(5, 4)), "zero entries with a non-zero weight"),
    (dict(beta_loss="kullback-leibler", U=-np.ones((5, 4))), "negative entries"),
    # missing values (tests/test_nmf_missing.py)
    (dict(weights=np.ones((5, 3))), "weights must have U's shape"),
    (dict(weights=2 * np.ones((5, 4))), r"in \[0, 1\]"),
    (dict(missing="nan", method="anls"), "need method='mu' or 'hals'"),
    (dict(missing="zero"), "missing must be None or 'nan'"),
    (dict(U=np.full((5, 4), np.inf), missing="nan"), "contains Inf values"),
    # fixed atoms and overcomplete dictionaries (tests/test_nmf_fixed.py)
    (dict(rank=5, init="random", method="anls"), "method='anls' needs at most m = 4"),
    (dict(fixed_atoms=np.ones((5, 2))), r"fixed_atoms must be \(m, d0\)"),
    (dict(fixed_atoms=-np.ones((4, 2))), "negative entries"),
    (dict(fixed_atoms=np.ones((4, 1)), init=(np.ones((4, 2)), np.ones((5, 2)))),
     "codes of the fixed atoms first"),
])
def test_bad_input_raises_a_clear_error(kwargs, message):
  args = dict(U=np.ones((5, 4)), rank=2)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    conejax.nmf(args.pop("U"), args.pop("rank"), key=KEY, **args)


def test_per_class_bad_input():
  X = np.ones((10, 4))
  with pytest.raises(ValueError, match="fewer than rank"):
    conejax.nmf_per_class(X, np.array([0] * 9 + [1]), 2, key=KEY)
  with pytest.raises(ValueError, match="labels but X has"):
    conejax.nmf_per_class(X, np.zeros(9), 2, key=KEY)
