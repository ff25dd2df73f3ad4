"""Fixed atoms and overcomplete dictionaries: fixed atoms bitwise unchanged for every method
and loss, the new atoms against numpy MU / HALS references, codes on a fixed W, rank above m.
Problems are (24, 10) with 2 fixed and 2 new atoms; bad input is in tests/test_nmf.py."""

import jax
import numpy as np
import pytest
from scipy.optimize import nnls

import conejax
from conejax import _nmf

KEY = jax.random.key(0)
N, M, D0, D = 24, 10, 2, 2


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  fixed = rng.random((M, D0))
  U = rng.random((N, D0 + D)) @ np.concatenate([fixed, rng.random((M, D))], 1).T + 0.05
  return U, fixed, rng.random((M, D)) + 0.1, rng.random((N, D0 + D)) + 0.1


def _numpy_fixed_mu(U, fixed, W, H, n_iter):
  """Frobenius MU on [fixed, W]: H fully, W's new columns only (the fixed ones restored)."""
  W = np.concatenate([fixed, W], 1)
  for _ in range(n_iter):
    H = H * (U @ W) / (H @ (W.T @ W))
    A, B = U.T @ H, H.T @ H
    W[:, D0:] = (W * A / (W @ B))[:, D0:]
  return W, H


def _numpy_fixed_hals(U, fixed, W, H, n_iter):
  """HALS on [fixed, W]: every column of H, then only the new columns of W."""
  W = np.concatenate([fixed, W], 1)
  for _ in range(n_iter):
    P, Q = U @ W, W.T @ W
    for k in range(D0 + D):
      H[:, k] = np.maximum(H[:, k] + (P[:, k] - H @ Q[:, k]) / Q[k, k], 0)
    A, B = U.T @ H, H.T @ H
    for k in range(D0, D0 + D):
      W[:, k] = np.maximum(W[:, k] + (A[:, k] - W @ B[:, k]) / B[k, k], 0)
  return W, H


@pytest.mark.parametrize("method, reference", [("mu", _numpy_fixed_mu),
                                               ("hals", _numpy_fixed_hals)])
def test_new_atoms_follow_the_reference(method, reference):
  U, fixed, W0, H0 = _problem(0)
  fit = conejax.nmf(U, D, key=KEY, method=method, init=(W0, H0), fixed_atoms=fixed,
                    max_iter=12, tol=0)
  W, H = reference(U, fixed, W0.copy(), H0.copy(), 12)
  np.testing.assert_allclose(np.asarray(fit.H) @ np.asarray(fit.W).T, H @ W.T, rtol=1e-10)
  assert np.array_equal(np.asarray(fit.W[:, :D0]), fixed)


@pytest.mark.parametrize("method, options", [
    ("mu", {}), ("hals", {}), ("anls", {}), ("hals", dict(mu_w=0.1, mu_h=0.1)),
    ("mu", dict(beta_loss="kullback-leibler")), ("mu", dict(beta_loss="itakura-saito"))])
def test_fixed_atoms_are_bitwise_unchanged(method, options):
  U, fixed, _, _ = _problem(1)
  fit = conejax.nmf(U, D, key=KEY, method=method, fixed_atoms=fixed, max_iter=20, **options)
  assert fit.W.shape == (M, D0 + D) and fit.H.shape == (N, D0 + D)
  assert np.array_equal(np.asarray(fit.W[:, :D0]), fixed)
  history = np.asarray(fit.objective)
  assert np.all(np.diff(history) <= 1e-12 * history[0]) and history[-1] < history[0]


def test_fixed_atoms_per_class_and_float32():
  U, fixed, _, _ = _problem(2)
  y = np.arange(N) % 2
  fit = conejax.nmf_per_class(U.astype(np.float32), y, D, key=KEY, init="random",
                              fixed_atoms=fixed.astype(np.float32), max_iter=10)
  assert fit.W.dtype == np.float32 and fit.W.shape == (2, M, D0 + D)
  for k in range(2):
    assert np.array_equal(np.asarray(fit.W[k, :, :D0]), fixed.astype(np.float32))


def test_codes_on_a_fixed_dictionary_equal_nnls():
  U, fixed, _, _ = _problem(3)
  W = np.concatenate([fixed, np.random.default_rng(30).random((M, D))], 1)
  out = _nmf.nmf_codes(W, U, method="hals", mu_h=0.0, max_iter=400, tol=0)
  assert np.array_equal(np.asarray(out.W), W)
  reference = np.stack([nnls(W, u)[0] for u in U])
  np.testing.assert_allclose(out.H, reference, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("method", ["mu", "hals"])
def test_rank_above_m_is_allowed_for_mu_and_hals(method):
  U, _, _, _ = _problem(4)
  fit = conejax.nmf(U, M + 4, key=KEY, method=method, init="random", max_iter=30, tol=0)
  assert fit.W.shape == (M, M + 4)
  history = np.asarray(fit.objective)
  assert np.all(np.diff(history) <= 1e-12 * history[0]) and history[-1] < 0.1 * history[0]
