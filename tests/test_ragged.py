"""Ragged cones (a rank per class): every function equals the cones taken one by one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conejax
from conejax import operators as ops
from helpers import scipy_nnls

M, WIDTHS, MU = 20, (3, 7, 5), 0.05
CLASSES = ("a", "b", "c")
DTYPES = [np.float32, np.float64]
TOL = {np.float32: 2e-5, np.float64: 1e-10}


def _dictionaries(dtype=np.float32):
  rng = np.random.default_rng(0)
  Ws = [rng.random((M, d)) for d in WIDTHS]
  return [(w / np.linalg.norm(w, axis=0)).astype(dtype) for w in Ws]


def _samples(dtype=np.float32, n=30):
  return np.random.default_rng(1).random((n, M)).astype(dtype)


def _penalised_nnls(W, X, mu):
  """argmin_{h >= 0} 0.5 ||W h - x||^2 + mu sum(h) by scipy: the NNLS of x - W G^-1 mu 1,
  whose normal equations are the same (W of full column rank)."""
  shift = W @ np.linalg.solve(W.T @ W, mu * np.ones(W.shape[1]))
  return scipy_nnls(W, X - shift)


def test_make_cones_pads_and_records_the_ranks():
  cones = conejax.make_cones(_dictionaries(), MU, CLASSES)
  assert cones.W.shape == (3, M, 7) and cones.rank == 7 and cones.ranks == WIDTHS
  for k, d in enumerate(WIDTHS):
    np.testing.assert_array_equal(cones.W[k, :, d:], 0)
  assert conejax.make_cones(_dictionaries()[:1] * 2, MU).ranks == (3, 3)  # one width: plain


@pytest.mark.parametrize("dtype", DTYPES)
def test_codes_distances_and_probabilities_equal_the_cones_one_by_one(dtype):
  with jax.enable_x64(dtype == np.float64):
    Ws, X = _dictionaries(dtype), _samples(dtype)
    cones = conejax.make_cones(Ws, MU, CLASSES)
    alone = [conejax.make_cones(w, MU) for w in Ws]
    D = np.asarray(conejax.distance(cones, X))
    D1 = np.stack([np.asarray(conejax.distance(c, X))[:, 0] for c in alone], 1)
    np.testing.assert_allclose(D, D1, rtol=TOL[dtype], atol=TOL[dtype])
    H = np.asarray(conejax.codes(cones, X))
    for k, (c, d) in enumerate(zip(alone, WIDTHS)):
      np.testing.assert_allclose(H[:, k, :d], np.asarray(conejax.codes(c, X))[:, 0],
                                 atol=TOL[dtype])
      np.testing.assert_array_equal(H[:, k, d:], 0)
    if dtype == np.float64:  # and the exact answer, scipy's NNLS of the penalised problem
      for k, w in enumerate(Ws):
        np.testing.assert_allclose(H[:, k, :WIDTHS[k]], _penalised_nnls(w, X, MU), atol=1e-8)
    np.testing.assert_array_equal(conejax.predict(cones, X),
                                  np.asarray(CLASSES)[np.argmin(D1, 1)])
    logits = -D1**2
    P = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(conejax.predict_proba(cones, X), P / P.sum(1, keepdims=True),
                               atol=1e-5)
    jitted = jax.jit(lambda X: conejax.distance(cones, X))(X)
    np.testing.assert_allclose(jitted, D, rtol=TOL[dtype], atol=TOL[dtype])


def test_reconstruct_through_a_mask_equals_the_cones_one_by_one():
  Ws, X = _dictionaries(), _samples()
  A = ops.mask((np.random.default_rng(2).random(M) > 0.4).astype(np.float32))
  V = X * np.asarray(A.weights)[None]
  cones = conejax.make_cones(Ws, MU, CLASSES)
  each = conejax.reconstruct(cones, V, A, select="each")
  for k, w in enumerate(Ws):
    one = conejax.reconstruct(conejax.make_cones(w, MU), V, A, select="each")
    np.testing.assert_allclose(each.u[:, k], one.u[:, 0], atol=2e-5)
    np.testing.assert_allclose(each.misfit[:, k], one.misfit[:, 0], atol=2e-5)
  best = conejax.reconstruct(cones, V, A, select="best")
  pick = np.argmin(np.asarray(each.misfit), 1)
  np.testing.assert_allclose(best.u, np.asarray(each.u)[np.arange(len(V)), pick], atol=2e-5)


def test_separate_equals_the_union_of_the_unpadded_dictionaries():
  Ws, X = _dictionaries(np.float64), _samples(np.float64)
  with jax.enable_x64(True):
    parts = np.asarray(conejax.separate(conejax.make_cones(Ws, MU, CLASSES), X))
  union = np.concatenate(Ws, axis=1)
  h = _penalised_nnls(union, X, MU)
  bounds = np.cumsum((0,) + WIDTHS)
  raw = np.stack([h[:, a:b] @ w.T for a, b, w in zip(bounds[:-1], bounds[1:], Ws)], 1)
  total = raw.sum(1, keepdims=True)
  expected = X[:, None] * np.where(total > 0, raw / np.where(total > 0, total, 1), 1 / 3)
  np.testing.assert_allclose(parts, expected, atol=1e-8)


def test_fit_cones_with_a_rank_per_class():
  rng = np.random.default_rng(3)
  y = np.repeat([0, 1, 2], 40)
  X = (rng.random((120, M)) + 2 * (np.arange(M)[None] % 3 == y[:, None])).astype(np.float32)
  cones = conejax.fit_cones(X, y, {0: 3, 1: 6, 2: 4}, key=jax.random.key(0), max_iter=10)
  assert cones.W.shape == (3, M, 6) and cones.ranks == (3, 6, 4) and cones.classes == (0, 1, 2)
  for k, d in enumerate(cones.ranks):
    np.testing.assert_array_equal(cones.W[k, :, d:], 0)
    np.testing.assert_allclose(np.linalg.norm(cones.W[k, :, :d], axis=0), 1, rtol=1e-5)
  assert dict(cones.settings)["rank"] == (3, 6, 4)
  assert np.mean(conejax.predict(cones, X) == y) > 0.95
  # Each class of a rank fitted on its own: the class 1 cone equals its own fit.
  alone = conejax.fit_cones(X[y == 1], y[y == 1], 6, key=jax.random.fold_in(jax.random.key(0), 6),
                            max_iter=10)
  np.testing.assert_allclose(cones.W[1], alone.W[0], atol=1e-6)


def test_ragged_cones_save_and_load(tmp_path):
  cones = conejax.make_cones(_dictionaries(), MU, CLASSES)
  conejax.save(tmp_path / "ragged", cones)
  again = conejax.load(tmp_path / "ragged")
  assert again.ranks == WIDTHS
  np.testing.assert_array_equal(again.W, cones.W)


def test_errors_name_the_argument():
  Ws = _dictionaries()
  with pytest.raises(ValueError, match="must share m"):
    conejax.make_cones([Ws[0], Ws[1][:-1]])
  y = np.repeat([0, 1], 10)
  X = np.random.default_rng(0).random((20, M)).astype(np.float32)
  with pytest.raises(ValueError, match=r"no entry for the classes \[1\]"):
    conejax.fit_cones(X, y, {0: 2}, key=jax.random.key(0))
  with pytest.raises(ValueError, match=r"entries \[5\] that are not classes"):
    conejax.fit_cones(X, y, {0: 2, 1: 2, 5: 2}, key=jax.random.key(0))
