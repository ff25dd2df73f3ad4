"""Weighted NMF (missing values): against a dense numpy MU, weighted NNLS (scipy) for the
codes, imputation, NaN as missing. Problems are (24, 10), rank 3; per-class fits and bad
input are in tests/test_nmf.py."""

import jax
import numpy as np
import pytest
from scipy.optimize import nnls

import conejax
from conejax import _nmf

KEY = jax.random.key(0)
N, M, D = 24, 10, 3
EPS = np.finfo(np.float32).eps


def _problem(seed=0, missing=0.3):
  rng = np.random.default_rng(seed)
  U = rng.random((N, D)) @ rng.random((D, M)) + 0.05
  weights = (rng.random((N, M)) > missing).astype(float)
  weights[rng.random((N, M)) < 0.2] = 0.5  # fractional weights too
  return U, weights, rng.random((M, D)) + 0.1, rng.random((N, D)) + 0.1


def _numpy_weighted_mu(U, weights, W, H, beta, n_iter):
  """Weighted MU in numpy: each factor by its MM update with the weights inside."""
  def ratios(WH):
    if beta == 2:
      return weights * U, weights * WH
    return weights * U / np.maximum(WH, EPS), weights
  for _ in range(n_iter):
    numerator, denominator = ratios(H @ W.T)
    H = H * (numerator @ W) / (denominator @ W)
    numerator, denominator = ratios(H @ W.T)
    W = W * (numerator.T @ H) / (denominator.T @ H)
  return W, H


@pytest.mark.parametrize("beta_loss, beta", [("frobenius", 2), ("kullback-leibler", 1)])
def test_weighted_mu_equals_numpy(beta_loss, beta):
  U, weights, W0, H0 = _problem(0)
  fit = conejax.nmf(U, D, key=KEY, init=(W0, H0), max_iter=15, tol=0, beta_loss=beta_loss,
                    weights=weights)
  W, H = _numpy_weighted_mu(U, weights, W0, H0, beta, 15)
  np.testing.assert_allclose(np.asarray(fit.H) @ np.asarray(fit.W).T, H @ W.T, rtol=1e-10)
  WH = H @ W.T
  if beta == 2:
    expected = 0.5 * np.sum(weights * (U - WH) ** 2)
  else:
    expected = np.sum(weights * (U * np.log(U / WH) - U + WH))
  np.testing.assert_allclose(fit.objective[-1], expected, rtol=1e-10)
  assert np.all(np.diff(np.asarray(fit.objective)) <= 1e-12 * float(fit.objective[0]))


def _numpy_weighted_hals(U, weights, W, H, n_iter):
  """Exact coordinate descent on 0.5 sum M (U - H W^T)^2: H's columns, then W's."""
  W, H = W.copy(), H.copy()
  for _ in range(n_iter):
    for X, Y, M_ in ((H, W, weights), (W, H, weights.T)):
      data = U if X is H else U.T
      for k in range(D):
        R = data - X @ Y.T + np.outer(X[:, k], Y[:, k])
        X[:, k] = np.maximum((M_ * R) @ Y[:, k] / (M_ @ Y[:, k] ** 2), 0)
  return W, H


def test_weighted_hals_equals_numpy_and_reaches_the_kkt_point():
  U, weights, W0, H0 = _problem(5)
  fit = conejax.nmf(U, D, key=KEY, method="hals", init=(W0, H0), max_iter=10, tol=0,
                    weights=weights)
  W, H = _numpy_weighted_hals(U, weights, W0, H0, 10)
  np.testing.assert_allclose(np.asarray(fit.H) @ np.asarray(fit.W).T, H @ W.T, rtol=1e-10)
  np.testing.assert_allclose(fit.objective[-1], 0.5 * np.sum(weights * (U - H @ W.T) ** 2),
                             rtol=1e-10)
  mu_w, mu_h = 0.02, 0.01
  fit = conejax.nmf(U, D, key=KEY, method="hals", init=(W0, H0), max_iter=3000, tol=0,
                    weights=weights, mu_w=mu_w, mu_h=mu_h)
  H, W = np.asarray(fit.H), np.asarray(fit.W)
  G = weights * (H @ W.T - U)  # KKT of the weighted objective: x >= 0, g >= 0, x g = 0
  for X, g in ((H, G @ W + mu_h), (W, G.T @ H + mu_w)):
    assert np.all(X >= 0) and np.all(g >= -1e-7)
    np.testing.assert_allclose(np.minimum(X, g), 0, atol=1e-7)


def test_weighted_codes_equal_weighted_nnls():
  # min_h sum_j w_j (v_j - (W h)_j)^2 is the NNLS of sqrt(w) v on diag(sqrt(w)) W.
  U, weights, W, _ = _problem(1)
  out = _nmf.nmf_codes(W, U, weights=weights, max_iter=3000, tol=0)
  root = np.sqrt(weights)
  reference = np.stack([nnls(r[:, None] * W, r * u)[0] for r, u in zip(root, U)])
  np.testing.assert_allclose(out.H, reference, rtol=1e-6, atol=1e-8)
  grad = ((weights * (np.asarray(out.H) @ W.T - U)) @ W)  # KKT: h >= 0, g >= 0, h g = 0
  assert np.all(np.asarray(out.H) >= 0) and np.all(grad >= -1e-8)
  np.testing.assert_allclose(np.asarray(out.H) * grad, 0, atol=1e-8)


def test_nan_means_weight_zero_and_missing_values_are_ignored():
  U, weights, W0, H0 = _problem(2)
  weights = (weights > 0.7).astype(float)
  options = dict(key=KEY, init=(W0, H0), max_iter=10, tol=0, method="mu")
  with_weights = conejax.nmf(U, D, weights=weights, **options)
  changed = np.where(weights > 0, U, 123.0)
  np.testing.assert_array_equal(conejax.nmf(changed, D, weights=weights, **options).W,
                                with_weights.W)
  with_nan = conejax.nmf(np.where(weights > 0, U, np.nan), D, missing="nan", **options)
  np.testing.assert_array_equal(with_nan.W, with_weights.W)
  np.testing.assert_array_equal(with_nan.H, with_weights.H)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_low_rank_data_is_imputed(dtype):
  rng = np.random.default_rng(3)
  U = (rng.random((N, D)) @ rng.random((D, M))).astype(dtype)
  observed = rng.random((N, M)) > 0.3
  fit = conejax.nmf(np.where(observed, U, np.nan).astype(dtype), D, key=KEY, missing="nan",
                    init="random", max_iter=2000, tol=0)
  assert fit.W.dtype == dtype
  imputed = np.asarray(fit.H @ fit.W.T, np.float64)[~observed]
  mean_fill = np.nanmean(np.where(observed, U, np.nan), axis=0)[None].repeat(N, 0)[~observed]
  error = np.linalg.norm(imputed - U[~observed]) / np.linalg.norm(U[~observed])
  assert error < 0.05 < np.linalg.norm(mean_fill - U[~observed]) / np.linalg.norm(U[~observed])
