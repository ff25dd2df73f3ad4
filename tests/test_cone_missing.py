"""Cones with missing values: ``weights=`` and ``missing="nan"`` in codes, project, distance
(and predict through it) and reconstruct; ``fit_cones(weights=)``.

References: scipy's NNLS on the sqrt-weighted rows (mu_h = 0), the KKT conditions of the
weighted problem (mu_h > 0), the unweighted call (all-ones weights), the cones restricted to
the observed entries (0/1 weights), nmf_codes of one row (beta-divergence cones); then jit,
vmap, float32 and float64, imputation of MNIST digits and bad input. Problems are (6, 12)
on ragged cones of widths 3 and 2 (0/1 masks observe 8 of the 12 entries of every sample),
so that most calls reuse a few compiled programs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import nnls

import conejax
from conejax import data
from conejax import operators as ops

N, M, WIDTHS, OBSERVED, MU = 6, 12, (3, 2), 8, 0.05
DTYPES = [np.float32, np.float64]
TOL = {np.float32: 2e-4, np.float64: 1e-10}


def _problem(dtype=np.float64, seed=0):
  """Ragged unit-norm dictionaries, samples of mixed sign and weights 0, 1/2 and 1."""
  rng = np.random.default_rng(seed)
  Ws = [rng.random((M, d)) for d in WIDTHS]
  Ws = [(w / np.linalg.norm(w, axis=0)).astype(dtype) for w in Ws]
  X = rng.random((N, WIDTHS[0])) @ Ws[0].T + 0.3 * rng.standard_normal((N, M))
  weights = np.where(rng.random((N, M)) < 0.25, 0.0, np.where(rng.random((N, M)) < 0.3, 0.5, 1))
  return Ws, X.astype(dtype), weights.astype(dtype)


def _mask(seed=1):
  """0/1 weights observing OBSERVED random entries of every sample."""
  rng = np.random.default_rng(seed)
  mask = np.zeros((N, M))
  for row in mask:
    row[rng.choice(M, OBSERVED, replace=False)] = 1
  return mask


def _weighted_nnls(W, X, weights):
  """argmin_{h >= 0} 0.5 sum_j w_j (x - W h)_j^2 per row: scipy's NNLS of sqrt(w) x on
  diag(sqrt(w)) W, in float64."""
  W, X, root = (np.asarray(a, np.float64) for a in (W, X, np.sqrt(weights)))
  return np.stack([nnls(r[:, None] * W, r * x)[0] for r, x in zip(root, X)])


def _kkt(B, V, weights, H, mu):
  """h >= 0, g >= 0 and h g = 0 for g = B^T diag(w) (B h - v) + mu, the gradient of the
  weighted objective, on every row."""
  g = (weights * (H @ B.T - V)) @ B + mu
  assert np.all(H >= 0) and np.all(g >= -1e-10)
  np.testing.assert_allclose(H * g, 0, atol=1e-10)
  assert np.any(H > 0) and np.any(H == 0)  # both sides of the conditions are exercised


@pytest.mark.parametrize("dtype", DTYPES)
def test_codes_distances_and_projections_equal_scipy_on_the_weighted_rows(dtype):
  with jax.enable_x64(dtype == np.float64):
    Ws, X, weights = _problem(dtype)
    cones = conejax.make_cones(Ws, 0.0)
    H = np.asarray(conejax.codes(cones, X, weights=weights))
    D = np.asarray(conejax.distance(cones, X, weights=weights))
    P = np.asarray(conejax.project(cones, X, weights=weights))
    estimates = [P]  # every entry, the missing ones imputed (reconstruct: float64 only, to
    if dtype == np.float64:  # compile less; the digits test runs it in float32)
      estimates.append(np.asarray(conejax.reconstruct(cones, X, weights=weights).u))
    assert H.dtype == D.dtype == P.dtype == dtype and H.shape == (N, 2, 3)
    for k, W in enumerate(Ws):
      h = _weighted_nnls(W, X, weights)
      np.testing.assert_allclose(H[:, k, :WIDTHS[k]], h, rtol=TOL[dtype], atol=TOL[dtype])
      np.testing.assert_array_equal(H[:, k, WIDTHS[k]:], 0)  # the ragged cone's padding
      residual = np.sqrt(weights) * (X - h @ W.T.astype(np.float64))
      np.testing.assert_allclose(D[:, k], np.linalg.norm(residual, axis=1), rtol=TOL[dtype])
      for estimate in estimates:
        np.testing.assert_allclose(estimate[:, k], h @ W.T, rtol=TOL[dtype], atol=TOL[dtype])


def test_penalised_codes_meet_the_weighted_kkt_conditions():
  """On the cones (B = W_k) and through a shared operator (B = A W_k, weights on v)."""
  Ws, X, weights = _problem()
  cones = conejax.make_cones(Ws, MU)
  A = np.random.default_rng(2).random((9, M))
  V = X @ A.T
  H = np.asarray(conejax.codes(cones, X, weights=weights))
  HA = np.asarray(conejax.reconstruct(cones, V, ops.matrix(jnp.asarray(A)),
                                      weights=weights[:, :9]).h)
  for k, W in enumerate(Ws):
    _kkt(W, X, weights, H[:, k, :WIDTHS[k]], MU)
    _kkt(A @ W, V, weights[:, :9], HA[:, k, :WIDTHS[k]], MU)


def test_all_ones_weights_equal_the_unweighted_call_exactly():
  Ws, X, _ = _problem()
  cones, ones = conejax.make_cones(Ws, MU), np.ones_like(X)
  for fn in (conejax.codes, conejax.distance, lambda c, x, **w: conejax.reconstruct(c, x, **w).u):
    np.testing.assert_array_equal(fn(cones, X, weights=ones), fn(cones, X))
  np.testing.assert_array_equal(conejax.predict(cones, X, weights=ones), conejax.predict(cones, X))


def test_zero_one_weights_equal_the_observed_entries_alone():
  Ws, X, _ = _problem()
  mask = _mask()
  cones = conejax.make_cones(Ws, MU)
  H = np.asarray(conejax.codes(cones, X, weights=mask))
  D = np.asarray(conejax.distance(cones, X, weights=mask))
  L1 = np.asarray(conejax.reconstruct(cones, X, weights=mask, loss="l1").h)
  for i, seen in enumerate(mask > 0):
    alone = conejax.make_cones([W[seen] for W in Ws], MU)
    np.testing.assert_allclose(H[i], conejax.codes(alone, X[i, seen]), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(D[i], conejax.distance(alone, X[i, seen]), rtol=1e-10)
    np.testing.assert_allclose(L1[i], conejax.reconstruct(alone, X[i, seen], loss="l1").h,
                               rtol=1e-6, atol=1e-8)


def test_missing_nan_equals_the_explicit_mask_and_missing_values_change_nothing():
  Ws, X, weights = _problem()
  mask = _mask()
  cones = conejax.make_cones(Ws, MU)
  with_nan = np.where(mask > 0, X, np.nan)
  changed = np.where(mask > 0, X, 123.0)
  for fn in (conejax.codes, conejax.distance, lambda c, x, **w: conejax.reconstruct(c, x, **w).u):
    expected = fn(cones, X, weights=mask)
    np.testing.assert_array_equal(fn(cones, with_nan, missing="nan"), expected)
    np.testing.assert_array_equal(fn(cones, changed, weights=mask), expected)
  # both: NaN entries get weight 0, the others keep theirs
  np.testing.assert_array_equal(conejax.codes(cones, with_nan, weights=weights, missing="nan"),
                                conejax.codes(cones, X, weights=weights * mask))


def test_jit_with_traced_weights_equals_eager():
  Ws, X, weights = _problem()
  cones = conejax.make_cones(Ws, MU)
  calls = lambda x, w, x_nan: (conejax.distance(cones, x, weights=w),
                               conejax.reconstruct(cones, x, weights=w).u,
                               conejax.codes(cones, x_nan, missing="nan"))
  mask = _mask()
  with_nan = np.where(mask > 0, X, np.nan)
  jitted = jax.jit(calls)(X, weights, with_nan)
  eager = calls(X, weights, with_nan)
  for a, b in zip(jitted, eager):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_vmap_equals_a_loop():
  """vmap over a leading axis of two problems against one call per problem."""
  problems = [_problem(seed=seed) for seed in (0, 1)]
  cones = conejax.make_cones(problems[0][0], MU)
  X, weights = (np.stack([p[i] for p in problems]) for i in (1, 2))
  one = lambda x, w: conejax.distance(cones, x, weights=w)
  looped = np.stack([one(x, w) for x, w in zip(X, weights)])
  np.testing.assert_allclose(jax.vmap(one)(X, weights), looped, rtol=1e-12)


def test_one_operator_per_sample_with_weights_equals_scipy():
  Ws, X, weights = _problem()
  seen = _mask(3)
  masks = jax.vmap(ops.mask)(jnp.asarray(seen))
  out = conejax.reconstruct(conejax.make_cones(Ws, 0.0), X, masks, per_sample_operator=True,
                            weights=weights, solver=conejax.solvers.APG(max_iter=20000, tol=1e-12))
  for k, W in enumerate(Ws):  # diag(sqrt(w)) A_i with A_i = diag(mask_i): weights w * mask_i
    np.testing.assert_allclose(out.h[:, k, :WIDTHS[k]], _weighted_nnls(W, X, weights * seen),
                               atol=1e-8)


def test_kl_codes_are_nmf_codes_of_each_weighted_row():
  """A cone's code of one row is nmf_codes(W_k, x, weights=w) of that row alone; the
  distance is sqrt(2 sum_j w_j d_KL); reconstruct codes the same; all-ones weights are the
  unweighted codes (to rounding: the unweighted KL updates sum the atoms once, not per row)."""
  Ws, X, weights = _problem()
  X = np.abs(X) + 0.05
  cones = conejax.make_cones(Ws, 0.01, settings=dict(beta_loss="kullback-leibler"))
  steps = dict(max_iter=150, tol=0)  # every update (no ConvergenceWarning)
  H = np.asarray(conejax.codes(cones, X, weights=weights, **steps))
  D = np.asarray(conejax.distance(cones, X, weights=weights, **steps))
  for k, W in enumerate(Ws):
    for i in range(N):
      fit = conejax.nmf_codes(W, X[i:i + 1], weights=weights[i:i + 1], mu_h=0.01,
                              beta_loss="kullback-leibler", **steps)
      np.testing.assert_allclose(H[i, k, :WIDTHS[k]], fit.H[0], rtol=1e-10, atol=1e-12)
      wh = fit.H[0] @ W.T
      kl = np.sum(weights[i] * (X[i] * np.log(X[i] / wh) - X[i] + wh))
      np.testing.assert_allclose(D[i, k], np.sqrt(2 * kl), rtol=1e-10)
  np.testing.assert_array_equal(conejax.reconstruct(cones, X, weights=weights, **steps).h, H)
  np.testing.assert_allclose(conejax.codes(cones, X, weights=np.ones_like(X), **steps),
                             conejax.codes(cones, X, **steps), rtol=1e-12, atol=1e-14)


def test_itakura_saito_allows_zeros_of_weight_zero():
  Ws, X, weights = _problem()
  X = np.abs(X) + 0.05
  cones = conejax.make_cones(Ws, 0.01, settings=dict(beta_loss="itakura-saito"))
  steps = dict(max_iter=50, tol=0)
  H = conejax.codes(cones, X, weights=weights, **steps)
  assert np.all(np.isfinite(H))
  np.testing.assert_array_equal(
      conejax.codes(cones, np.where(weights > 0, X, 0.0), weights=weights, **steps), H)


def test_reconstruct_imputes_the_missing_pixels_of_digits():
  """Half the pixels of 20 test digits missing, coded on cones of 40 training digits per
  class (0, 1, 7): the weighted reconstruction errs on the missing pixels less than half as
  much as zeros, and a quarter less than the training mean or the code of the zero-filled
  digit taken as observed (which a weighted code that ignored its weights would be)."""
  x_train, y_train, x_test, y_test = data.load_mnist()
  classes = (0, 1, 7)
  Ws = [x_train[y_train == c][:40].T for c in classes]
  Ws = [w / np.linalg.norm(w, axis=0) for w in Ws]
  test = np.isin(y_test, classes)
  X, y = x_test[test][:20], y_test[test][:20]
  weights = (np.random.default_rng(0).random(X.shape) > 0.5).astype(np.float32)
  missing = weights == 0
  error = lambda U: np.linalg.norm((np.asarray(U) - X)[missing]) / np.linalg.norm(X[missing])
  out = conejax.reconstruct(conejax.make_cones(Ws, 0.0, classes), X, weights=weights,
                            select="best")
  union = np.concatenate(Ws, axis=1)  # unweighted, by scipy: zeros read as observed
  zero_filled = np.stack([union @ nnls(union, x)[0] for x in X * weights])
  assert error(out.u) < 0.5 * error(np.zeros_like(X)), error(out.u)
  assert error(out.u) < 0.75 * min(error(np.broadcast_to(x_train.mean(0), X.shape)),
                                   error(zero_filled)), error(out.u)
  assert np.mean(np.asarray(classes)[out.cone] == y) >= 0.9


def _labelled(seed=3):
  """Non-negative samples of two classes (ten each) and weights 0, 1/2, 1 of their entries."""
  rng = np.random.default_rng(seed)
  X = rng.random((20, M)) + np.repeat(np.eye(2), 10, 0) @ rng.random((2, M))
  weights = np.where(rng.random(X.shape) < 0.3, 0.0, np.where(rng.random(X.shape) < 0.3, 0.5, 1))
  return X, np.repeat([4, 9], 10), weights


def test_fit_cones_with_weights_is_the_weighted_nmf_per_class_with_unit_atoms():
  X, y, weights = _labelled()
  fit = dict(key=jax.random.key(2), init="kmeans", method="mu", max_iter=20)
  cones = conejax.fit_cones(X, y, 3, weights=weights, **fit)
  nmf = conejax.nmf_per_class(X, y, 3, weights=weights, **fit)
  W = np.asarray(nmf.W) / np.linalg.norm(np.asarray(nmf.W), axis=1, keepdims=True)
  np.testing.assert_allclose(cones.W, W, rtol=1e-6, atol=1e-9)
  assert cones.classes == (4, 9) and dict(cones.settings)["weighted"]
  # the values at weight-0 entries change nothing; NaN there with missing="nan" is the same
  garbage = np.where(weights == 0, 7.0, X)
  again = conejax.fit_cones(garbage, y, 3, weights=weights, **fit)
  np.testing.assert_array_equal(again.W, cones.W)
  nans = conejax.fit_cones(np.where(weights == 0, np.nan, X), y, 3, missing="nan",
                           weights=np.where(weights == 0, 1.0, weights), **fit)
  np.testing.assert_array_equal(nans.W, cones.W)
  # the unweighted cones are a different fit (unit atoms during training), not these
  assert not dict(conejax.fit_cones(X, y, 3, **fit).settings)["weighted"]


def test_ragged_fit_cones_with_weights_equals_each_rank_alone():
  X, y, weights = _labelled(4)
  fit = dict(init="kmeans", method="mu", max_iter=20)
  key = jax.random.key(5)
  ragged = conejax.fit_cones(X, y, {4: 3, 9: 2}, key=key, weights=weights, **fit)
  for label, rank in ((4, 3), (9, 2)):
    rows = y == label
    alone = conejax.fit_cones(X[rows], y[rows], rank, key=jax.random.fold_in(key, rank),
                              weights=weights[rows], **fit)
    k = ragged.classes.index(label)
    np.testing.assert_allclose(ragged.W[k][:, :rank], alone.W[0], rtol=1e-6, atol=1e-9)
  with pytest.raises(ValueError, match=r"weights must have X's shape"):
    conejax.fit_cones(X, y, {4: 3, 9: 2}, key=key, weights=weights[:, :5], **fit)


@pytest.mark.parametrize("call, match", [
    (lambda c, X, w: conejax.codes(c, X, weights=w[:, :5]), r"weights must have X's shape"),
    (lambda c, X, w: conejax.distance(c, X, weights=2 * w),
     r"weights must be finite and in \[0, 1\]"),
    (lambda c, X, w: conejax.predict(c, X, weights=np.where(w > 0, w, np.nan)),
     r"weights must be finite and in \[0, 1\]"),
    (lambda c, X, w: conejax.codes(c, np.where(w > 0, X, np.nan), weights=w),
     "X contains NaN or Inf"),
    (lambda c, X, w: conejax.distance(c, X, missing="zero"), "missing must be None or 'nan'"),
    (lambda c, X, w: conejax.codes(c, np.where(w > 0, X, np.inf), missing="nan"),
     "X contains NaN or Inf"),
    (lambda c, X, w: conejax.reconstruct(c, X, weights=w[:, :5]), r"weights must have V's shape"),
    (lambda c, X, w: conejax.fit_cones(np.abs(X), np.arange(N) % 2, 2, key=jax.random.key(0),
                                       weights=w[:, :5]), r"weights must have X's shape"),
    (lambda c, X, w: conejax.distance(c, X[:, :9], A=ops.matrix(jnp.ones((9, M))), weights=w),
     r"weights must have X's shape"),
    (lambda c, X, w: conejax.codes(c, np.abs(X) * (w > 0.7), weights=w,
                                   beta_loss="itakura-saito"), "is infinite where X is 0: X has"),
])
def test_bad_weights_raise_a_value_error_that_names_them(call, match):
  Ws, X, weights = _problem()
  with pytest.raises(ValueError, match=match):
    call(conejax.make_cones(Ws, MU), X, weights)


def test_bad_weights_and_nan_under_jit_give_nan():
  Ws, X, weights = _problem()
  cones = conejax.make_cones(Ws, MU)
  calls = jax.jit(lambda x, w: (conejax.codes(cones, x, weights=w),
                                conejax.reconstruct(cones, x, weights=w).u))
  for bad in (2 * weights, -weights, np.where(weights > 0, weights, np.nan)):
    assert all(np.all(np.isnan(out)) for out in calls(X, bad))
  H, U = calls(np.where(weights > 0, X, np.nan), weights)  # NaN without missing="nan"
  rows = np.any(weights == 0, axis=1)
  assert np.all(np.isnan(H[rows])) and np.all(np.isnan(U[rows])) and np.all(np.isfinite(H[~rows]))
