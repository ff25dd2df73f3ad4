"""Beta-divergence NMF: iterate for iterate against scikit-learn's solver="mu", codes on a
fixed dictionary, monotone objective, scale equivariance, kernels under jit and vmap.

Problems are (24, 10) at rank 3 so that each loss compiles once per dtype. Per-class fits
and bad input are in tests/test_nmf.py, with the Frobenius cases.
"""

import warnings

import jax
import numpy as np
import pytest
from sklearn.decomposition import NMF, non_negative_factorization
from sklearn.decomposition._nmf import _beta_divergence

import conejax
from conejax import _nmf, _nmf_steps

KEY = jax.random.key(0)
N, M, D = 24, 10, 3
LOSSES = ["kullback-leibler", "itakura-saito", 0.5, 1.5, 3.0]


def _data(seed=0, floor=0.0, zeros=False):
  rng = np.random.default_rng(seed)
  U = rng.random((N, D)) @ rng.random((D, M)) + 0.1 * rng.random((N, M))
  if zeros:
    U[U < np.quantile(U, 0.2)] = 0
  return U + floor


def _init(seed=1):
  rng = np.random.default_rng(seed)
  return rng.random((M, D)) + 0.1, rng.random((N, D)) + 0.1


def _sklearn_history(U, W0, H0, beta_loss, mu_w, mu_h, n_iter):
  """scikit-learn's MU one iteration at a time: each iterate's penalised objective."""
  codes, atoms, history = H0.copy(), W0.T.copy(), []
  model = NMF(D, init="custom", solver="mu", beta_loss=beta_loss, max_iter=1, tol=0,
              alpha_W=mu_h / M, alpha_H=mu_w / N, l1_ratio=1.0)
  for _ in range(n_iter):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      codes = model.fit_transform(U, W=codes, H=atoms)
    atoms = model.components_.copy()
    history.append(_beta_divergence(U, codes, atoms, beta_loss) + mu_h * codes.sum()
                   + mu_w * atoms.sum())
  return codes, atoms, np.array(history)


@pytest.mark.parametrize("beta_loss", LOSSES)
@pytest.mark.parametrize("penalties", [(0.0, 0.0), (0.05, 0.1)])
def test_iterates_equal_scikit_learn_mu(beta_loss, penalties):
  U = _data(0, floor=0.05 if beta_loss in ("itakura-saito", 0.5) else 0.0,
            zeros=beta_loss not in ("itakura-saito", 0.5))
  W0, H0 = _init()
  mu_w, mu_h = penalties
  fit = conejax.nmf(U, D, key=KEY, method="mu", init=(W0, H0), max_iter=20, tol=0,
                    beta_loss=beta_loss, mu_w=mu_w, mu_h=mu_h)
  codes, atoms, history = _sklearn_history(U, W0, H0, beta_loss, mu_w, mu_h, 20)
  np.testing.assert_allclose(fit.objective, history, rtol=1e-8)
  np.testing.assert_allclose(np.asarray(fit.H) @ np.asarray(fit.W).T, codes @ atoms, rtol=1e-8)
  if mu_w or mu_h:  # the penalties fix the scale: the factors themselves agree
    np.testing.assert_allclose(fit.W, atoms.T, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(fit.H, codes, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("beta_loss", ["kullback-leibler", "itakura-saito"])
def test_float32_objective_never_increases_and_follows_float64(beta_loss):
  U, (W0, H0) = _data(2, floor=0.05), _init()
  options = dict(key=KEY, max_iter=40, tol=0, beta_loss=beta_loss, mu_h=0.01)
  fit32 = conejax.nmf(U.astype(np.float32), D, init=(W0.astype(np.float32),
                                                     H0.astype(np.float32)), **options)
  fit64 = conejax.nmf(U, D, init=(W0, H0), **options)
  assert fit32.W.dtype == np.float32 and fit64.W.dtype == np.float64
  history = np.asarray(fit32.objective, np.float64)
  assert np.all(np.diff(history) <= 1e-5 * history[0])
  assert np.all(np.diff(np.asarray(fit64.objective)) <= 1e-12 * history[0])
  np.testing.assert_allclose(fit32.objective, fit64.objective, rtol=2e-4)


def test_objective_is_the_divergence_of_the_returned_factors():
  U = _data(3, zeros=True)
  fit = conejax.nmf(U, D, key=KEY, beta_loss=1.5, mu_w=0.02, mu_h=0.03, max_iter=15, tol=0)
  direct = (_beta_divergence(U, np.asarray(fit.H), np.asarray(fit.W).T, 1.5)
            + 0.02 * np.sum(fit.W) + 0.03 * np.sum(fit.H))
  np.testing.assert_allclose(fit.objective[-1], direct, rtol=1e-10)


def test_fits_are_scale_equivariant():
  U = _data(4, floor=0.01)
  options = dict(key=KEY, init="nndsvda", max_iter=15, tol=0, beta_loss="itakura-saito")
  fit = conejax.nmf(U, D, **options)
  big = conejax.nmf(U * 1e6, D, **options)
  np.testing.assert_allclose(big.W, fit.W, rtol=1e-9)
  np.testing.assert_allclose(big.H, 1e6 * np.asarray(fit.H), rtol=1e-9)
  np.testing.assert_allclose(big.objective, fit.objective, rtol=1e-9)  # IS: scale-free


def test_kernels_jit_and_vmap_equal_eager():
  U = _data(5, floor=0.02)
  W, H = _init()
  WH = H @ W.T
  step = lambda u, h, wh: _nmf_steps.mu_beta_codes(u, W, h, wh, 0.1, 0.5)
  eager = step(U, H, WH)
  np.testing.assert_allclose(jax.jit(step)(U, H, WH), eager, rtol=1e-14)
  one = lambda u, h, wh: step(u[None], h[None], wh[None])[0]
  np.testing.assert_allclose(jax.vmap(one)(U, H, WH), eager, rtol=1e-14)


def _numpy_codes(W, V, beta, mu_h, n_iter):
  """The MM update of H alone in numpy (scikit-learn's formula, recomputed every step)."""
  gamma = 1 / (2 - beta) if beta < 1 else (1 / (beta - 1) if beta > 2 else 1)
  H = np.full((V.shape[0], W.shape[1]), np.sqrt(V.mean() / W.shape[1]))
  for _ in range(n_iter):
    WH = np.maximum(H @ W.T, np.finfo(np.float32).eps)
    H = H * ((V * WH ** (beta - 2)) @ W / (WH ** (beta - 1) @ W + mu_h)) ** gamma
  return H


@pytest.mark.parametrize("beta_loss, mu_h", [("kullback-leibler", 0.0), ("itakura-saito", 0.2),
                                             ("frobenius", 0.2)])
def test_codes_equal_scikit_learn_transform(beta_loss, mu_h):
  rng = np.random.default_rng(6)
  W = rng.random((M, D))
  V = rng.random((N, D)) @ W.T + 0.1
  out = _nmf.nmf_codes(W, V, beta_loss=beta_loss, method="mu", mu_h=mu_h, max_iter=30, tol=0)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    codes, _, _ = non_negative_factorization(
        V, H=W.T.copy(), update_H=False, solver="mu", beta_loss=beta_loss, tol=0, max_iter=30,
        alpha_W=mu_h / M, l1_ratio=1.0, n_components=D)
  np.testing.assert_allclose(out.H, codes, rtol=1e-8, atol=1e-12)
  assert np.array_equal(np.asarray(out.W), W)


def test_penalised_kl_codes_equal_the_mm_update():
  # scikit-learn's transform adds the KL penalty in place to a cached column sum, so its
  # denominator grows every iteration: the reference is the update written out instead.
  rng = np.random.default_rng(7)
  W = rng.random((M, D))
  V = rng.random((N, D)) @ W.T + 0.1
  out = _nmf.nmf_codes(W, V, beta_loss="kullback-leibler", mu_h=0.3, max_iter=30, tol=0)
  np.testing.assert_allclose(out.H, _numpy_codes(W, V, 1.0, 0.3, 30), rtol=1e-9)
  assert np.all(np.diff(np.asarray(out.objective)) <= 1e-12 * float(out.objective[0]))


def test_inner_iterations_repeat_each_factor_update():
  from sklearn.decomposition._nmf import _multiplicative_update_h, _multiplicative_update_w
  U, (W0, H0) = _data(10, zeros=True), _init()
  fit = conejax.nmf(U, D, key=KEY, init=(W0, H0), max_iter=4, tol=0, inner_iter=2,
                    beta_loss="kullback-leibler", mu_h=0.05)
  codes, atoms = H0.copy(), W0.T.copy()
  for _ in range(4):  # scikit-learn's updates: its W is our H, its H our W^T
    for _ in range(2):
      codes = _multiplicative_update_w(U, codes, atoms, 1.0, 0.05, 0, 1.0)[0]
    for _ in range(2):
      atoms = _multiplicative_update_h(U, codes, atoms, 1.0, 0, 0, 1.0)
  np.testing.assert_allclose(np.asarray(fit.H) @ np.asarray(fit.W).T, codes @ atoms, rtol=1e-10)


def test_codes_bad_input():
  with pytest.raises(ValueError, match="but V has 3 features"):
    _nmf.nmf_codes(np.ones((4, 2)), np.ones((5, 3)))
  with pytest.raises(ValueError, match="init must be the codes"):
    _nmf.nmf_codes(np.ones((4, 2)), np.ones((5, 4)), init=np.ones((5, 3)))
