"""Beta-divergence cones: codes, distances and reconstructions against nmf_codes and numpy."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import conejax
from conejax import data
from conejax import operators as ops

M, D, K, MU = 12, 4, 3, 0.05
KL, IS = "kullback-leibler", "itakura-saito"
EPS32, EPS64 = float(np.finfo(np.float32).eps), float(np.finfo(np.float64).eps)


def _problem(dtype=np.float64, n=9, beta_loss=KL):
  rng = np.random.default_rng(0)
  W = rng.random((K, M, D))
  W = (W / np.linalg.norm(W, axis=1, keepdims=True)).astype(dtype)
  X = (rng.random((n, M)) + 0.01).astype(dtype)  # > 0: Itakura-Saito needs it
  settings = None if beta_loss is None else dict(beta_loss=beta_loss)
  return conejax.make_cones(W, MU, ("a", "b", "c"), settings), W, X


def _numpy_mu(B, V, mu, beta, n_iter, mean=None):
  """nmf_codes' multiplicative updates transcribed for each row alone: min D_beta(v | B h) +
  mu |h|_1 from sqrt(mean(v) / d), at the row's unit scale v / max(v) (mean: per row of V
  unless given)."""
  s = V.max(axis=1, keepdims=True)
  V1, mu1 = V / s, mu / s ** (beta - 1)
  mean = V.mean(axis=1, keepdims=True) if mean is None else mean
  H = np.broadcast_to(np.sqrt(mean / B.shape[1]) / s, (V.shape[0], B.shape[1]))
  gamma = 1 / (2 - beta) if beta < 1 else 1.0
  for _ in range(n_iter):
    safe = np.maximum(H @ B.T, EPS32)
    if beta == 1:
      numerator, denominator = (V1 / safe) @ B, B.sum(0)[None] + mu1
    else:  # beta = 0
      numerator, denominator = (V1 / safe**2) @ B, (1 / safe) @ B + mu1
    H = H * (numerator / denominator) ** gamma
    if beta < 1:
      H[H < EPS64] = 0
  return H * s


def _alone(W_k, X, **options):
  """nmf_codes of each row of X alone (its own scale, start and stopping test)."""
  return np.concatenate([np.asarray(conejax.nmf_codes(W_k, X[i:i + 1], **options).H)
                         for i in range(len(X))])


def _numpy_distance(x, wh, beta):
  """sqrt(2 D_beta(x | wh)) per row, wh floored at float32 eps as nmf_objective does."""
  safe = np.maximum(wh, EPS32)
  if beta == 1:
    d = x * np.log(x / safe) - x + wh
  else:
    d = x / safe - np.log(x / safe) - 1
  return np.sqrt(2 * np.maximum(d.sum(-1), 0))


@pytest.mark.parametrize("beta_loss,beta", [(KL, 1.0), (IS, 0.0)])
def test_codes_and_distances_equal_nmf_codes_and_numpy(beta_loss, beta):
  cones, W, X = _problem(beta_loss=beta_loss)
  H, Dk = np.asarray(conejax.codes(cones, X)), np.asarray(conejax.distance(cones, X))
  fixed = dict(max_iter=60, tol=0.0)
  H60 = np.asarray(conejax.codes(cones, X, **fixed))
  D60 = np.asarray(conejax.distance(cones, X, **fixed))
  assert H.shape == (9, K, D) and Dk.shape == (9, K)
  for k in range(K):  # nmf_codes, one cone and one sample at a time, at its defaults
    alone = _alone(W[k], X, mu_h=MU, beta_loss=beta_loss)
    np.testing.assert_allclose(H[:, k], alone, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(Dk[:, k], _numpy_distance(X, np.asarray(alone) @ W[k].T, beta),
                               rtol=1e-8)
    reference = _numpy_mu(W[k], X, MU, beta, 60)  # and numpy, a fixed number of updates
    np.testing.assert_allclose(H60[:, k], reference, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(D60[:, k], _numpy_distance(X, reference @ W[k].T, beta),
                               rtol=1e-8)
  np.testing.assert_allclose(conejax.project(cones, X), np.einsum("nkd,kmd->nkm", H, W),
                             rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_codes_follow_the_cones_loss_in_float32_and_float64(dtype):
  # A fixed number of updates: in float32 the relative-decrease test (tol 1e-5) sits near
  # the objective's rounding, so a batched and a lone run may stop an update apart.
  tol, fixed = (2e-6 if dtype == np.float32 else 1e-10), dict(max_iter=100, tol=0.0)
  with jax.enable_x64(dtype == np.float64):
    cones, W, X = _problem(dtype)
    H = conejax.codes(cones, X, **fixed)
    assert H.dtype == dtype and conejax.distance(cones, X).dtype == dtype
    np.testing.assert_array_equal(H, conejax.codes(cones, X, beta_loss=KL, **fixed))
    for k in range(K):
      alone = _alone(W[k], X, mu_h=MU, beta_loss=KL, **fixed)
      np.testing.assert_allclose(H[:, k], alone, rtol=tol, atol=tol)


@pytest.mark.parametrize("beta_loss", [KL, IS])
def test_a_sample_is_coded_as_if_alone(beta_loss):
  """A sample's code and distance do not depend on its batch (own scale, start, stopping)."""
  cones, W, X = _problem(beta_loss=beta_loss)
  X = X * np.geomspace(1e-3, 1e3, len(X))[:, None]  # rows of very different scales
  H, Dk = np.asarray(conejax.codes(cones, X)), np.asarray(conejax.distance(cones, X))
  for part in (X[:1], X[2:5], X[::2]):
    rows = [np.flatnonzero((X == row).all(1))[0] for row in part]
    np.testing.assert_allclose(conejax.codes(cones, part), H[rows], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(conejax.distance(cones, part), Dk[rows], rtol=1e-12)


def test_frobenius_is_the_existing_distance_exactly():
  cones, W, X = _problem()
  plain = conejax.make_cones(W, MU, ("a", "b", "c"))
  expected = np.asarray(conejax.distance(plain, X))
  for loss in ("frobenius", 2.0):
    np.testing.assert_array_equal(conejax.distance(cones, X, beta_loss=loss), expected)
    np.testing.assert_array_equal(conejax.codes(cones, X, beta_loss=loss),
                                  conejax.codes(plain, X))
  assert not np.allclose(conejax.distance(cones, X), expected)  # KL by default on KL cones
  np.testing.assert_array_equal(conejax.distance(_problem(beta_loss=None)[0], X), expected)


def test_predictions_follow_the_distances():
  cones, _, X = _problem()
  Dk = np.asarray(conejax.distance(cones, X))
  labels = np.asarray(cones.classes)[np.argmin(Dk, -1)]
  np.testing.assert_array_equal(conejax.predict(cones, X), labels)
  logits = -Dk**2 / 0.3
  p = np.exp(logits - logits.max(-1, keepdims=True))
  np.testing.assert_allclose(conejax.predict_proba(cones, X, 0.3), p / p.sum(-1, keepdims=True),
                             rtol=1e-10)
  np.testing.assert_allclose(conejax.log_likelihood(cones, X, 0.3), logits, rtol=1e-12)
  assert conejax.score(cones, X, labels) == 1.0
  T = conejax.calibrate(cones, X, np.where(np.arange(9) % 3 == 0, "a", labels))
  assert float(T) > 0
  frobenius = conejax.distance(cones, X, beta_loss="frobenius")
  assert np.array_equal(conejax.predict(cones, X, beta_loss="frobenius"),
                        np.asarray(cones.classes)[np.argmin(frobenius, -1)])


def test_jit_equals_eager():
  cones, _, X = _problem()
  for fn in (conejax.codes, conejax.distance):
    np.testing.assert_allclose(jax.jit(fn)(cones, X), fn(cones, X), rtol=1e-12, atol=1e-14)
  log_p = jax.jit(lambda c, x: conejax.log_likelihood(c, x, beta_loss=IS))(cones, X)
  np.testing.assert_allclose(log_p, conejax.log_likelihood(cones, X, beta_loss=IS), rtol=1e-12)


def test_ragged_cones_equal_the_cones_one_by_one():
  _, W, X = _problem()
  Ws = [W[0][:, :2], W[1], W[2][:, :3]]
  cones = conejax.make_cones(Ws, MU, settings=dict(beta_loss=KL))
  H, Dk = conejax.codes(cones, X), conejax.distance(cones, X)
  for k, w in enumerate(Ws):
    alone = conejax.make_cones(w, MU, settings=dict(beta_loss=KL))
    np.testing.assert_allclose(H[:, k, :w.shape[1]], conejax.codes(alone, X)[:, 0], rtol=1e-8,
                               atol=1e-12)
    np.testing.assert_array_equal(H[:, k, w.shape[1]:], 0)
    np.testing.assert_allclose(Dk[:, k], conejax.distance(alone, X)[:, 0], rtol=1e-8)


def test_fit_cones_under_kl_classifies_mnist_and_saves_its_loss():
  x_train, y_train, x_test, y_test = data.load_mnist()
  digits = (0, 1, 7)
  train = np.concatenate([np.flatnonzero(y_train == c)[:200] for c in digits])
  test = np.flatnonzero(np.isin(y_test, digits))[::2]
  options = dict(key=jax.random.key(0), max_iter=30)
  cones = conejax.fit_cones(x_train[train], y_train[train], 8, beta_loss=KL, **options)
  assert dict(cones.settings)["beta_loss"] == KL
  fit = conejax.nmf_per_class(x_train[train], y_train[train], 8, method="mu", init="kmeans",
                              tol=1e-5, beta_loss=KL, **options)
  W = np.asarray(fit.W)
  np.testing.assert_allclose(cones.W, W / np.linalg.norm(W, axis=1, keepdims=True), rtol=1e-6,
                             atol=1e-7)
  accuracy = conejax.score(cones, x_test[test], y_test[test])
  assert accuracy > 0.85, accuracy  # chance is 1/3
  file = io.BytesIO()
  conejax.save(file, cones)
  file.seek(0)
  loaded = conejax.load(file)
  assert dict(loaded.settings)["beta_loss"] == KL and loaded.settings == cones.settings
  np.testing.assert_array_equal(conejax.distance(loaded, x_test[test][:20]),
                                conejax.distance(cones, x_test[test][:20]))


def test_a_float_beta_is_recorded_and_round_trips(tmp_path):
  rng = np.random.default_rng(2)
  X, y = rng.random((40, 6)) + 0.1, np.repeat([0, 1], 20)
  cones = conejax.fit_cones(X, y, 2, key=jax.random.key(0), beta_loss=1.5, max_iter=5,
                            init="random")
  assert dict(cones.settings)["beta_loss"] == 1.5
  conejax.save(tmp_path / "c", cones)
  loaded = conejax.load(tmp_path / "c")
  np.testing.assert_array_equal(conejax.codes(loaded, X), conejax.codes(cones, X, beta_loss=1.5))


def test_reconstruct_through_a_mask_equals_numpy_on_the_observed_rows():
  cones, W, X = _problem()
  mask = (np.random.default_rng(3).random(M) > 0.4).astype(np.float64)
  V = X * mask
  out = conejax.reconstruct(cones, V, ops.mask(mask), max_iter=60, tol=0.0)
  seen = mask > 0
  for k in range(K):
    h = _numpy_mu(W[k][seen], X[:, seen], MU, 1.0, 60, mean=V.mean(axis=1, keepdims=True))
    np.testing.assert_allclose(out.h[:, k], h, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(out.u[:, k], h @ W[k].T, rtol=1e-8, atol=1e-10)
    misfit = _numpy_distance(X[:, seen], h @ W[k][seen].T, 1.0) ** 2 / 2
    np.testing.assert_allclose(out.misfit[:, k], misfit, rtol=1e-8)
  best = conejax.reconstruct(cones, V, ops.mask(mask), select="best", max_iter=60, tol=0.0)
  objective = np.asarray(out.misfit) + MU * np.asarray(out.h).sum(-1)
  np.testing.assert_array_equal(best.cone, np.argmin(objective, -1))
  np.testing.assert_array_equal(best.h, np.asarray(out.h)[np.arange(9), best.cone])
  np.testing.assert_allclose(conejax.distance(cones, V, A=ops.mask(mask), max_iter=60, tol=0.0),
                             np.sqrt(2 * np.asarray(out.misfit)), rtol=1e-12)


def test_reconstruct_with_the_identity_is_codes():
  cones, _, X = _problem()
  out = conejax.reconstruct(cones, X)
  np.testing.assert_allclose(out.h, conejax.codes(cones, X), rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(np.sqrt(2 * out.misfit), conejax.distance(cones, X), rtol=1e-12)
  frobenius = conejax.reconstruct(cones, X, beta_loss="frobenius")
  plain = conejax.reconstruct(conejax.make_cones(cones.W, MU), X)
  np.testing.assert_array_equal(frobenius.h, plain.h)
  np.testing.assert_array_equal(conejax.reconstruct(cones.W, X, mu_h=MU).h, plain.h)  # arrays: L2


def test_separate_follows_the_cones_loss():
  cones, _, X = _problem()
  np.testing.assert_array_equal(conejax.separate(cones, X),
                                conejax.separate(cones, X, beta_loss=KL))


@pytest.mark.parametrize("call,error,match", [
    (lambda c, X: conejax.codes(c, X, solver="apg"), ValueError, "solver='apg'"),
    (lambda c, X: conejax.distance(c, X, batch_size=16), ValueError, "batch_size=16"),
    (lambda c, X: conejax.predict(c, X, penalty="relative"), ValueError, "penalty='relative'"),
    (lambda c, X: conejax.codes(c, X, differentiation="unroll"), ValueError, "differentiation"),
    (lambda c, X: conejax.codes(c, X, chunk=3), TypeError, "unexpected options"),
    (lambda c, X: conejax.distance(c, -X), ValueError, "X has negative entries"),
    (lambda c, X: conejax.distance(c, X * 0, beta_loss=IS), ValueError, "where X is 0"),
    (lambda c, X: conejax.codes(c, X, beta_loss="kl"), ValueError, "beta_loss"),
    (lambda c, X: conejax.reconstruct(c, X, loss="l1"), ValueError, "loss='l1'"),
    (lambda c, X: conejax.reconstruct(c, X, jax.vmap(ops.mask)(np.ones_like(X)),
                                      per_sample_operator=True), ValueError, "per_sample"),
    (lambda c, X: conejax.distance(c, X, A=ops.mask(np.ones(M)), solver="apg"), ValueError,
     "solver='apg'"),
    (lambda c, X: conejax.reconstruct(c, -X), ValueError, "V has negative entries"),
    (lambda c, X: conejax.reconstruct(c, X[:, :2], ops.matrix(-np.ones((2, M)))), ValueError,
     "A W >= 0"),
])
def test_bad_options_raise_named_errors(call, error, match):
  cones, _, X = _problem()
  with pytest.raises(error, match=match):
    call(cones, X)


def test_negative_data_under_jit_is_nan():
  """Under jit the sign cannot raise: the sample with a negative entry gets NaN distances,
  the others their own."""
  cones, _, X = _problem()
  D = np.asarray(jax.jit(conejax.distance)(cones, jnp.asarray(X).at[0, 0].set(-1.0)))
  assert np.all(np.isnan(D[0]))
  np.testing.assert_allclose(D[1:], conejax.distance(cones, X[1:]), rtol=1e-12)


def test_reconstruct_union_and_posterior_under_kl():
  cones, W, X = _problem()
  A = ops.mask((np.arange(M) % 4 != 0).astype(np.float64))
  V, fixed = ops.apply(A, X), dict(max_iter=100, tol=0.0)  # every update: no warning
  union = conejax.reconstruct(cones, V, A, select="union", **fixed)
  alone = conejax.reconstruct(np.concatenate(list(W), axis=1), V, A, mu_h=MU, beta_loss=KL,
                              **fixed)
  np.testing.assert_allclose(union.h, alone.h, rtol=1e-12, atol=1e-14)
  post = conejax.reconstruct(cones, V, A, select="posterior", temperature=0.5, **fixed)
  each = conejax.reconstruct(cones, V, A, **fixed)
  p = conejax.predict_proba(cones, V, 0.5, A=A, **fixed)
  np.testing.assert_allclose(post.u, np.einsum("nk,nkm->nm", p, each.u), rtol=1e-10)
  np.testing.assert_array_equal(post.cone, np.argmax(p, -1))


def test_finetune_refuses_cones_of_a_beta_divergence():
  """finetune trains the Frobenius distances; KL cones would be validated and used under KL."""
  cones, W, X = _problem()
  with pytest.raises(ValueError, match="finetune differentiates the Frobenius projection"):
    conejax.finetune(cones, X, np.arange(len(X)) % K, optax.adam(1e-3), steps=1,
                     key=jax.random.key(0), batch_size=2)


def test_codes_that_stop_at_max_iter_warn():
  """Never silent: stopping at max_iter above the tolerance is a ConvergenceWarning."""
  cones, _, X = _problem()
  with pytest.warns(conejax.ConvergenceWarning, match="distance: 27 of 27"):
    conejax.distance(cones, X, max_iter=1, tol=1e-12)
