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
  # 1500 training digits and the default 20 updates (93.4% on the next 500, held out).
  X, y = mnist_train(2000)
  cones = conejax.fit_cones(X[:1500], y[:1500], 16, key=KEY)
  assert cones.W.shape == (10, 784, 16) and cones.classes == tuple(range(10))
  np.testing.assert_allclose(np.linalg.norm(cones.W, axis=1), 1, rtol=1e-5)
  assert conejax.score(cones, X[1500:], y[1500:]) > 0.9
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


# Classification through an operator: the distance of v to cone k is its misfit on
# cone(A W_k), checked against explicitly formed cones of the dense products A W_k.

from conejax import operators  # noqa: E402

IMAGE = (4, 4)


def _image_cones(dtype, mu_h=0.05):
  rng = np.random.default_rng(10)
  W = rng.random((3, 16, 4)) * (rng.random((3, 16, 4)) > 0.3)
  W /= np.linalg.norm(W, axis=1, keepdims=True)
  X = np.einsum("nd,kmd->nkm", rng.random((6, 4)), W)[:, 1] + 0.1 * rng.random((6, 16))
  return conejax.make_cones(W.astype(dtype), mu_h), X.astype(dtype), rng


def _dense_cones(cones, A):
  dense = operators.materialise(A, dtype=cones.W.dtype)
  B = np.asarray(dense, np.float64) @ np.asarray(cones.W, np.float64)
  return conejax.make_cones(np.maximum(B, 0).astype(cones.W.dtype), cones.mu_h)


@pytest.mark.parametrize("dtype, transform", [(np.float32, lambda f: f), (np.float64, jax.jit)],
                         ids=["float32-eager", "float64-jit"])
def test_distance_through_an_operator_equals_the_dense_cones(dtype, transform):
  with jax.enable_x64(dtype == np.float64):
    cones, X, rng = _image_cones(dtype)
    tol = 2e-4 if dtype == np.float32 else 1e-9
    for A in [operators.mask(rng.random(16) > 0.4), operators.downsample(2, IMAGE)]:
      V = operators.apply(A, X)
      D = transform(lambda V: conejax.distance(cones, V, A=A))(V)
      assert D.shape == (6, 3) and D.dtype == dtype
      np.testing.assert_allclose(D, conejax.distance(_dense_cones(cones, A), V), rtol=tol,
                                 atol=tol)
    # the last operator: likelihood, labels and a vmap over samples agree with D
    np.testing.assert_allclose(conejax.log_likelihood(cones, V, 0.5, A=A), -D**2 / 0.5,
                               rtol=tol, atol=tol)
    np.testing.assert_array_equal(conejax.predict(cones, V, A=A),
                                  np.asarray(cones.classes)[np.argmin(D, axis=1)])
    vmapped = jax.vmap(lambda v: conejax.distance(cones, v, A=A))(V)
    np.testing.assert_allclose(vmapped, D, rtol=tol, atol=tol)


def test_distance_through_sensing_matches_scipy_nnls():
  from scipy.optimize import nnls
  cones, X, _ = _image_cones(np.float64, mu_h=0.0)
  A = operators.gaussian_sensing(jax.random.key(1), 10, 16)
  V = np.asarray(operators.apply(A, X))
  D = np.asarray(conejax.distance(cones, V, A=A))
  B = np.asarray(operators.materialise(A, dtype=jnp.float64)) @ np.asarray(cones.W)
  expected = [[nnls(B[k], v)[1] for k in range(3)] for v in V]
  np.testing.assert_allclose(D, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_per_sample_operators_equal_a_loop(dtype):
  with jax.enable_x64(dtype == np.float64):
    cones, X, rng = _image_cones(dtype)
    M = (rng.random(X.shape) > 0.4).astype(dtype)
    masks = jax.vmap(operators.mask)(jnp.asarray(M))
    tol = 1e-3 if dtype == np.float32 else 1e-6
    options = dict(tol=1e-6 if dtype == np.float32 else 1e-10, max_iter=20000)
    D = conejax.distance(cones, X * M, A=masks, per_sample_operator=True, **options)
    looped = np.stack([conejax.distance(_dense_cones(cones, operators.mask(m)), x * m)
                       for x, m in zip(X, M)])
    np.testing.assert_allclose(D, looped, rtol=tol, atol=tol)
    p = conejax.predict_proba(cones, X * M, A=masks, per_sample_operator=True,
                              temperature=0.1, **options)
    expected = np.exp(-looped**2 / 0.1) / np.exp(-looped**2 / 0.1).sum(1, keepdims=True)
    np.testing.assert_allclose(p, expected, rtol=10 * tol, atol=tol)


@pytest.mark.parametrize("call, error, message", [
    (lambda c, A: conejax.distance(c, np.ones((2, 16)), A=A), ValueError, r"V must have shape"),
    (lambda c, A: conejax.distance(c, np.ones((2, 4)), A=A, penalty="relative"), ValueError,
     "penalty='absolute'"),
    (lambda c, A: conejax.distance(c, np.ones((2, 16)), per_sample_operator=True), ValueError,
     "needs an operator A"),
    (lambda c, A: conejax.distance(c, np.ones((2, 4)), A=operators.identity(4)), ValueError,
     "atoms have size"),
])
def test_operator_bad_inputs_give_clear_errors(call, error, message):
  cones, _, _ = _image_cones(np.float32)
  with pytest.raises(error, match=message):
    call(cones, operators.downsample(2, IMAGE))


def _nll(D, labels, T):
  logits = -np.asarray(D, np.float64) ** 2 / T
  logits -= logits.max(1, keepdims=True)
  return np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(len(labels)), labels])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_calibrate_minimises_the_validation_log_likelihood(dtype):
  from scipy.optimize import minimize_scalar
  with jax.enable_x64(dtype == np.float64):
    cones = _toy_cones(dtype=dtype)
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 3, 40)
    X = np.einsum("nd,nmd->nm", rng.random((40, 4)), np.asarray(cones.W)[labels])
    X = (X + 0.3 * rng.random((40, 12))).astype(dtype)   # noisy: some samples misclassified
    y = np.asarray(cones.classes)[labels]
    T = conejax.calibrate(cones, X, y)
    assert T.shape == () and T.dtype == dtype
    D = np.asarray(conejax.distance(cones, X), np.float64)
    assert np.any(np.argmin(D, 1) != labels)
    ref = minimize_scalar(lambda t: _nll(D, labels, np.exp(t)), bounds=(-12, 6),
                          method="bounded", options=dict(xatol=1e-10))
    rtol = 1e-3 if dtype == np.float32 else 1e-6
    np.testing.assert_allclose(float(T), np.exp(ref.x), rtol=rtol)
    assert _nll(D, labels, float(T)) <= ref.fun + 1e-9
    # scale-equivariant: data times 2^-50 gives T times 2^-100, inside float32's range
    np.testing.assert_allclose(conejax.calibrate(cones, np.ldexp(X, -50), y), np.ldexp(T, -100),
                               rtol=rtol)
    # labels are matched to cones by value, not position
    shuffled = conejax.make_cones(cones.W[::-1], cones.mu_h, classes=cones.classes[::-1])
    np.testing.assert_allclose(conejax.calibrate(shuffled, X, y), T, rtol=1e-5)


def test_calibrate_through_an_operator_equals_the_dense_cones():
  cones, X, rng = _image_cones(np.float32)
  A = operators.downsample(2, IMAGE)
  V = operators.apply(A, X) + 0.05 * rng.standard_normal((6, 4)).astype(np.float32)
  y = np.array([7, 3, 5, 3, 7, 5])
  cones = conejax.make_cones(cones.W, cones.mu_h, classes=[7, 3, 5])
  dense = conejax.make_cones(_dense_cones(cones, A).W, cones.mu_h, classes=[7, 3, 5])
  np.testing.assert_allclose(conejax.calibrate(cones, V, y, A=A), conejax.calibrate(dense, V, y),
                             rtol=1e-4)


def test_calibrate_warns_without_a_minimiser_and_rejects_bad_labels():
  cones = _toy_cones()
  X = np.asarray(cones.W[:, :, 0])            # each sample on its own cone: separable
  with pytest.warns(UserWarning, match="nearest its own cone"):
    assert float(conejax.calibrate(cones, X, [7, 3, 5])) < 1e-6
  with pytest.raises(ValueError, match="have no cone"):
    conejax.calibrate(cones, X, [7, 3, 4])
  with pytest.raises(ValueError, match="one label per sample"):
    conejax.calibrate(cones, X, [7, 3])
