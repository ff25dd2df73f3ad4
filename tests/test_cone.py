"""Cones: projection and distance identities, classification, batching, save and load."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conejax
from helpers import mnist_test, mnist_train

KEY = jax.random.key(0)


def _toy_cones(mu_h=0.0, dtype=np.float64):
  rng = np.random.default_rng(0)
  W = rng.random((3, 12, 4)).astype(dtype) * (rng.random((3, 12, 4)) > 0.4)
  W /= np.linalg.norm(W, axis=1, keepdims=True)
  return conejax.make_cones(W, mu_h, classes=[7, 3, 5])


def test_distance_is_the_norm_of_the_projection_residual():
  cones = _toy_cones(mu_h=0.05)
  X = np.random.default_rng(1).random((9, 12))
  P = np.asarray(conejax.project(cones, X))
  D = np.asarray(conejax.distance(cones, X))
  np.testing.assert_allclose(D, np.linalg.norm(X[:, None, :] - P, axis=-1), rtol=1e-10)
  assert np.all(D <= np.linalg.norm(X, axis=1)[:, None] + 1e-12)  # 0 is in every cone


def test_a_point_inside_the_cone_projects_onto_itself():
  cones = _toy_cones()
  H = np.random.default_rng(2).random((5, 4))
  X = H @ np.asarray(cones.W[1]).T
  np.testing.assert_allclose(conejax.project(cones, X)[:, 1], X, atol=1e-8)
  np.testing.assert_allclose(conejax.distance(cones, X)[:, 1], 0, atol=1e-8)
  P = np.asarray(conejax.project(cones, X))[:, 2]
  np.testing.assert_allclose(conejax.project(cones, P)[:, 2], P, atol=1e-8)  # idempotent


def test_codes_shape_and_features():
  cones = _toy_cones()
  X = np.random.default_rng(3).random((2, 6, 12))
  assert conejax.codes(cones, X).shape == (2, 6, 3, 4)
  assert conejax.features(cones, X).shape == (2, 6, 12)
  assert conejax.distance(cones, X).shape == (2, 6, 3)


def test_predictions_are_invariant_to_class_order():
  cones = _toy_cones()
  X = np.random.default_rng(4).random((30, 12))
  order = [2, 0, 1]
  shuffled = conejax.make_cones(cones.W[np.array(order)], 0.0,
                                classes=[cones.classes[i] for i in order])
  np.testing.assert_array_equal(conejax.predict(cones, X), conejax.predict(shuffled, X))
  assert set(conejax.predict(cones, X)) <= {7, 3, 5}


def test_probabilities_are_a_softmax_of_minus_squared_distances():
  cones = _toy_cones()
  X = np.random.default_rng(5).random((4, 12))
  p = np.asarray(conejax.predict_proba(cones, X, temperature=0.5, max_iter=1000, tol=1e-10))
  D = np.asarray(conejax.distance(cones, X))
  expected = np.exp(-D**2 / 0.5) / np.exp(-D**2 / 0.5).sum(axis=1, keepdims=True)
  np.testing.assert_allclose(p, expected, rtol=1e-10)
  np.testing.assert_allclose(conejax.log_likelihood(cones, X, 0.5), -D**2 / 0.5, rtol=1e-12)


@pytest.mark.parametrize("transform", [lambda f: f, jax.jit], ids=["eager", "jit"])
def test_batched_equals_looped(transform):
  cones = _toy_cones(mu_h=0.1)
  X = np.random.default_rng(6).random((8, 12))
  batched = transform(lambda X: conejax.distance(cones, X))(X)
  looped = np.stack([conejax.distance(cones, x) for x in X])
  vmapped = jax.vmap(lambda x: conejax.distance(cones, x))(X)
  np.testing.assert_allclose(batched, looped, rtol=1e-9)
  np.testing.assert_allclose(vmapped, looped, rtol=1e-9)


def test_distance_gradient_is_finite_at_zero_residual():
  cones = _toy_cones()
  x = np.asarray(cones.W[0]) @ np.array([1.0, 0.5, 0.0, 0.2])
  grad = jax.grad(lambda x: conejax.distance(cones, x)[0])(jnp.asarray(x))
  assert np.all(np.isfinite(grad))


def test_fit_cones_classifies_mnist_digits():
  X, y = mnist_train(3000)
  cones = conejax.fit_cones(X, y, 16, key=KEY, max_iter=50)
  assert cones.W.shape == (10, 784, 16) and cones.classes == tuple(range(10))
  np.testing.assert_allclose(np.linalg.norm(cones.W, axis=1), 1, rtol=1e-5)
  from helpers import _mnist
  labels = _mnist()[1][:3000]
  assert conejax.score(cones, X[:500], labels[:500]) > 0.9
  assert dict(cones.settings)["rank"] == 16


def test_save_and_load_round_trip_exactly(tmp_path):
  cones = _toy_cones(mu_h=0.25, dtype=np.float32)
  cones = conejax.make_cones(cones.W, 0.25, cones.classes, dict(rank=4, method="mu"))
  conejax.save(tmp_path / "cones.npz", cones)
  loaded = conejax.load(tmp_path / "cones.npz")
  np.testing.assert_array_equal(loaded.W, cones.W)
  assert loaded.W.dtype == cones.W.dtype
  assert float(loaded.mu_h) == 0.25 and loaded.classes == (7, 3, 5)
  assert loaded.settings == cones.settings


def test_bad_files_give_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no cones file"):
    conejax.load(tmp_path / "missing.npz")
  conejax.save(tmp_path / "good.npz", _toy_cones())
  data = (tmp_path / "good.npz").read_bytes()
  (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match="truncated"):
    conejax.load(tmp_path / "truncated.npz")
  np.savez(tmp_path / "foreign.npz", weights=np.ones(3))
  with pytest.raises(ValueError, match="not a conejax cones file"):
    conejax.load(tmp_path / "foreign.npz")
  (tmp_path / "text.npz").write_text("hello")
  with pytest.raises(ValueError, match="truncated or not an .npz"):
    conejax.load(tmp_path / "text.npz")
  np.savez(tmp_path / "pickled.npz", format=np.asarray("conejax.cones"), version=1,
           W=np.ones((1, 2, 1)), mu_h=0.0, classes=np.array([object()], dtype=object),
           settings=np.asarray("{}"))
  with pytest.raises(ValueError, match="without pickle"):
    conejax.load(tmp_path / "pickled.npz")


@pytest.mark.parametrize("call, message", [
    (lambda c: conejax.distance(c, np.ones((3, 11))), "X must have shape"),
    (lambda c: conejax.distance(c, np.full((3, 12), np.inf)), "NaN or Inf"),
    (lambda c: conejax.predict_proba(c, np.ones((3, 12)), temperature=0.0), "temperature"),
    (lambda c: conejax.score(c, np.ones((3, 12)), [1, 2]), "y has shape"),
    (lambda c: conejax.make_cones(-np.ones((4, 2))), "negative entries"),
    (lambda c: conejax.make_cones(np.ones((2, 4, 2)), classes=[1]), "class labels"),
])
def test_bad_inputs_give_clear_errors(call, message):
  with pytest.raises(ValueError, match=message):
    call(_toy_cones())


def test_training_codes_are_the_projection_codes():
  # One convention for mu_h: the H of a converged sparse NMF (unit atoms) is what the
  # cone's projection gives its training data.
  rng = np.random.default_rng(0)
  U = rng.random((60, 5)) @ rng.random((5, 20)) + 0.05 * rng.random((60, 20))
  mu_h = 0.3
  fit = conejax.nmf(U, 5, key=jax.random.key(0), mu_h=mu_h, method="hals", max_iter=4000,
                    tol=0, unit_atoms=True)
  np.testing.assert_allclose(np.linalg.norm(fit.W, axis=0), 1.0, rtol=1e-12)
  assert np.mean(np.asarray(fit.H) == 0) > 0.05   # the penalty is active
  H = conejax.codes(conejax.make_cones(fit.W, mu_h), U)[:, 0]
  np.testing.assert_allclose(H, fit.H, atol=1e-7 * float(np.max(fit.H)))
