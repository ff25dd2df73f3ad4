"""Patch cones and plug-and-play restoration: references, closed forms, jit, vmap, PSNR."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.feature_extraction.image import reconstruct_from_patches_2d
from sklearn.linear_model import Lasso

import conejax
from conejax import operators
from conejax._patch_cones import project_patches

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 2e-4, np.float64: 1e-7}


def _smooth_images(seed, n, side, dtype=np.float64):
  """Piecewise-smooth test images in [0, 1]: blurred random rectangles."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:side, :side] / side
  out = []
  for _ in range(n):
    img = 0.3 + 0.2 * np.sin(2 * np.pi * (rng.random() * x + rng.random() * y))
    for _ in range(4):
      a, b = np.sort(rng.random(2)), np.sort(rng.random(2))
      img = img + 0.3 * ((x > a[0]) & (x < a[1]) & (y > b[0]) & (y < b[1]))
    out.append(np.clip(img, 0, 1))
  return np.stack(out).astype(dtype)


@pytest.fixture(scope="module")
def cones():
  return conejax.fit_patch_cones(_smooth_images(0, 6, 24), 4, key=jax.random.key(0), rank=8,
                                 max_iter=50)


@pytest.fixture(scope="module")
def mixture():
  return conejax.fit_patch_cones(_smooth_images(1, 6, 24), 4, key=jax.random.key(1), rank=6,
                                 n_cones=2, max_iter=20, n_train=1000, kcones_iter=2)


def _lasso_fit(W, r, mu):
  """Reference signed code: scikit-learn's Lasso min 1/(2m) ||r - W c||^2 + alpha |c|_1."""
  if mu == 0:
    return W @ np.linalg.lstsq(W, r, rcond=None)[0]
  model = Lasso(alpha=mu / len(r), fit_intercept=False, tol=1e-12, max_iter=100000)
  return W @ model.fit(W, r).coef_


def test_fit_patch_cones_gives_unit_non_negative_atoms(cones, mixture):
  assert cones.W.shape == (1, 16, 8) and mixture.W.shape == (2, 16, 6)
  for pc in (cones, mixture):
    assert np.all(np.asarray(pc.W) >= 0)
    np.testing.assert_allclose(np.linalg.norm(pc.W, axis=1), 1, rtol=1e-6)
  assert cones.patch_shape == (4, 4) and cones.signed
  assert dict(cones.cones.settings)["rank"] == 8


@pytest.mark.parametrize("mu", [0.0, 0.05, 0.2])
def test_signed_projection_equals_lasso_plus_mean(cones, mu):
  X = np.asarray(conejax.extract_patches(_smooth_images(2, 1, 10)[0], 4, stride=3))
  X = X + 0.05 * np.random.default_rng(0).standard_normal(X.shape)
  P, nnz, _ = project_patches(cones, jnp.asarray(X), mu)
  W = np.asarray(cones.W[0], np.float64)
  for x, p in zip(X, np.asarray(P)):
    ref = x.mean() + _lasso_fit(W, x - x.mean(), mu)
    np.testing.assert_allclose(p, ref, atol=1e-6)
  assert np.all(np.asarray(nnz) <= 8)


def test_reweighted_projection_equals_weighted_lasso(cones):
  """One reweighting pass: Lasso with per-atom weights w_j = mu / (|c_j| + mu), solved by
  scikit-learn on the rescaled columns W_j / w_j."""
  X = np.asarray(conejax.extract_patches(_smooth_images(7, 1, 10)[0], 4, stride=3))
  X = X + 0.05 * np.random.default_rng(1).standard_normal(X.shape)
  mu = 0.05
  P, _, _ = project_patches(cones, jnp.asarray(X), mu, reweight=1)
  W = np.asarray(cones.W[0], np.float64)
  for x, p in zip(X, np.asarray(P)):
    r = x - x.mean()
    first = Lasso(alpha=mu / len(r), fit_intercept=False, tol=1e-12, max_iter=100000)
    w = mu / (np.abs(first.fit(W, r).coef_) + mu)
    second = Lasso(alpha=mu / len(r), fit_intercept=False, tol=1e-12, max_iter=100000)
    e = second.fit(W / w, r).coef_
    np.testing.assert_allclose(p, x.mean() + (W / w) @ e, atol=1e-6)


@pytest.mark.parametrize("mu", [0.0, 0.05])
def test_free_plane_projection_equals_lasso_plus_the_least_squares_plane(cones, mu):
  """free_degree=1: P(x) = plane(x) + W c, the plane fitted by numpy's lstsq on [1, y, x]
  and c the Lasso code of x - plane(x); a patch that is a plane is returned with no code."""
  plane_cones = dataclasses.replace(cones, free_degree=1)
  X = np.asarray(conejax.extract_patches(_smooth_images(8, 1, 10)[0], 4, stride=3))
  X = X + 0.05 * np.random.default_rng(2).standard_normal(X.shape)
  y, x = np.mgrid[:4, :4]
  basis = np.stack([np.ones(16), y.ravel(), x.ravel()], axis=1)
  ramp = 0.2 + 0.03 * y.ravel() - 0.05 * x.ravel()
  X = np.concatenate([X, ramp[None]])
  P, nnz, _ = project_patches(plane_cones, jnp.asarray(X), mu)
  W = np.asarray(cones.W[0], np.float64)
  for row, p in zip(X, np.asarray(P)):
    plane = basis @ np.linalg.lstsq(basis, row, rcond=None)[0]
    np.testing.assert_allclose(p, plane + _lasso_fit(W, row - plane, mu), atol=1e-6)
  np.testing.assert_allclose(np.asarray(P)[-1], ramp, atol=1e-12)
  assert mu == 0 or int(nnz[-1]) == 0  # at mu = 0 rounding-level residuals get codes
  # The mean is the degree-0 free term: the plane's projection differs from it.
  P0, _, _ = project_patches(cones, jnp.asarray(X), mu)
  assert np.max(np.abs(np.asarray(P0)[-1] - ramp)) > 1e-3


@pytest.mark.parametrize("dtype", DTYPES)
def test_warm_started_codes_give_the_cold_projection(mixture, dtype):
  """codes= only warm-starts the exact solves: the codes of another penalty as the start
  give the cold start's projection, counts and codes."""
  X = np.asarray(conejax.extract_patches(_smooth_images(9, 1, 12)[0], 4, stride=2), dtype)
  X = X + 0.05 * np.random.default_rng(3).standard_normal(X.shape).astype(dtype)
  _, _, start = project_patches(mixture, jnp.asarray(X), 0.2)
  assert start.shape == (2, len(X), 12) and start.dtype == dtype
  cold = project_patches(mixture, jnp.asarray(X), 0.02)
  warm = project_patches(mixture, jnp.asarray(X), 0.02, codes=start)
  np.testing.assert_allclose(warm[0], cold[0], atol=TOL[dtype])
  np.testing.assert_array_equal(warm[1], cold[1])
  np.testing.assert_allclose(warm[2], cold[2], atol=TOL[dtype])


def test_mixture_takes_the_cone_of_least_penalised_objective(mixture):
  X = np.asarray(conejax.extract_patches(_smooth_images(3, 1, 12)[0], 4, stride=4))
  mu = 0.05
  P, _, _ = project_patches(mixture, jnp.asarray(X), mu)
  for x, p in zip(X, np.asarray(P)):
    r = x - x.mean()
    best = None
    for W in np.asarray(mixture.W, np.float64):
      model = Lasso(alpha=mu / len(r), fit_intercept=False, tol=1e-12, max_iter=100000)
      c = model.fit(W, r).coef_
      objective = 0.5 * np.sum((W @ c - r) ** 2) + mu * np.abs(c).sum()
      if best is None or objective < best[0]:
        best = (objective, x.mean() + W @ c)
    np.testing.assert_allclose(p, best[1], atol=1e-6)


def test_identity_without_noise_returns_the_averaged_projection(cones):
  v = _smooth_images(4, 1, 12)[0]
  got = conejax.restore(cones, v.reshape(-1), image_shape=(12, 12), sigma=0.0, n_iter=1,
                        tau=0.0, sigma_start=0.1, stride=1, weights="uniform")
  W = np.asarray(cones.W[0])
  X = np.asarray(conejax.extract_patches(v, 4))
  fits = np.stack([x.mean() + _lasso_fit(W, x - x.mean(), 0.0) for x in X])
  ref = reconstruct_from_patches_2d(fits.reshape(-1, 4, 4), (12, 12))
  np.testing.assert_allclose(got, ref, atol=1e-6)
  with_penalty = conejax.restore(cones, v.reshape(-1), image_shape=(12, 12), sigma=0.0,
                                 n_iter=1, tau=1.0, sigma_start=0.02, stride=1,
                                 weights="uniform")
  fits = np.stack([x.mean() + _lasso_fit(W, x - x.mean(), 0.02) for x in X])
  ref = reconstruct_from_patches_2d(fits.reshape(-1, 4, 4), (12, 12))
  np.testing.assert_allclose(with_penalty, ref, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mask_without_noise_keeps_the_observed_pixels(cones, dtype):
  u = _smooth_images(5, 1, 16, dtype)[0].reshape(-1)
  M = (np.random.default_rng(1).random(u.shape) < 0.5).astype(dtype)
  A = operators.mask(M)
  got = np.asarray(conejax.restore(cones, A.mv(u), A, image_shape=(16, 16), sigma=0.0,
                                   n_iter=4, output="data")).reshape(-1)
  assert got.dtype == dtype
  np.testing.assert_allclose(got[M == 1], u[M == 1], rtol=10 * np.finfo(dtype).eps)
  assert np.abs(got[M == 0] - u[M == 0]).mean() < 0.1  # the prior fills the rest


@pytest.mark.parametrize("dtype", DTYPES)
def test_noiseless_data_step_projects_the_prior_step_onto_the_data(cones, dtype):
  """sigma = 0, an operator other than a mask (2x pooling): the data step is the projection
  of the last prior step z onto {A u = v}, u = z + A^+ (v - A z) (numpy's pinv of the dense
  A), so the prior shapes the result (CG started anywhere but z would ignore it)."""
  truth = _smooth_images(10, 1, 12, dtype)[0].reshape(-1)
  A = operators.downsample(2, (12, 12))
  v = np.asarray(A.mv(truth))
  options = dict(image_shape=(12, 12), sigma=0.0, n_iter=3, stride=2, cg_iter=8,
                 sigma_start=0.2, tau=0.5)
  u = np.asarray(conejax.restore(cones, v, A, output="data", **options)).reshape(-1)
  z = np.asarray(conejax.restore(cones, v, A, output="prior", **options)).reshape(-1)
  dense = np.asarray(jax.vmap(A.mv)(jnp.eye(144, dtype=dtype))).T  # (36, 144)
  projection = z + np.linalg.pinv(dense.astype(np.float64)) @ (v - dense @ z)
  np.testing.assert_allclose(u, projection, atol=20 * TOL[dtype])
  np.testing.assert_allclose(dense @ u, v, atol=20 * TOL[dtype])
  start = conejax.restore(cones, v, A, output="data", **{**options, "n_iter": 1})
  assert np.max(np.abs(u - np.asarray(start).reshape(-1))) > 1e-3  # the prior steps matter


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_vmap_and_jit_equal_the_loop(cones, dtype):
  images = _smooth_images(6, 3, 12, dtype)
  rng = np.random.default_rng(3)
  blur = operators.blur(np.ones((3, 3)) / 9, (12, 12))
  V = np.stack([blur.mv(u.reshape(-1)) for u in images]) + 0.01 * rng.standard_normal((3, 144))
  V = V.astype(dtype)
  # APG keeps the five programs below cheap to compile (the active set's own batch
  # invariance is tested in test_solvers.py); what is tested here is restore's batching.
  options = dict(image_shape=(12, 12), sigma=0.01, n_iter=2, cg_iter=3,
                 solver=conejax.solvers.APG(max_iter=300))
  batch = conejax.restore(cones, V, blur, **options)
  assert batch.shape == (3, 12, 12) and batch.dtype == dtype
  looped = np.stack([conejax.restore(cones, v, blur, **options) for v in V])
  np.testing.assert_allclose(batch, looped, atol=TOL[dtype])
  jitted = jax.jit(lambda V: conejax.restore(cones, V, blur, **options))(V)
  np.testing.assert_allclose(jitted, batch, atol=TOL[dtype])
  masks = jax.vmap(operators.mask)(jnp.asarray(rng.random((3, 144)) < 0.6, dtype))
  U = images.reshape(3, -1)
  mv = jax.vmap(lambda A, u: A.mv(u))(masks, U)
  per_image = jax.vmap(lambda A, v: conejax.restore(cones, v, A, **options))(masks, mv)
  loop = np.stack([conejax.restore(cones, mv[i], operators.mask(masks.weights[i]), **options)
                   for i in range(3)])
  np.testing.assert_allclose(per_image, loop, atol=TOL[dtype])


def _psnr(u, truth):
  return 10 * np.log10(1 / np.mean((np.clip(np.asarray(u), 0, 1) - truth) ** 2))


@pytest.fixture(scope="module")
def camera():
  from skimage import data, transform
  train = [transform.resize(data.astronaut()[..., 1] / 255.0, (96, 96)),
           transform.resize(data.coins() / 255.0, (96, 96))]
  pc = conejax.fit_patch_cones(train, 6, key=jax.random.key(0), rank=16, n_train=4000)
  truth = transform.resize(data.camera() / 255.0, (64, 64)).astype(np.float32)
  return pc, truth


def test_restore_improves_psnr_on_a_real_image(camera):
  pc, truth = camera
  rng = np.random.default_rng(0)
  noisy = (truth + 0.1 * rng.standard_normal(truth.shape)).astype(np.float32)
  denoised = conejax.restore(pc, noisy.reshape(-1), image_shape=(64, 64), sigma=0.1, n_iter=1,
                             stride=1)
  assert _psnr(denoised, truth) > _psnr(noisy, truth) + 4
  M = (rng.random(truth.size) < 0.5).astype(np.float32)
  A = operators.mask(M)
  v = A.mv(truth.reshape(-1))
  filled = conejax.restore(pc, v, A, image_shape=(64, 64), sigma=0.0, n_iter=8,
                           sigma_start=0.2)
  mean_filled = np.where(M == 1, v, v.sum() / M.sum()).reshape(64, 64)
  assert _psnr(filled, truth) > _psnr(mean_filled, truth) + 6


@pytest.mark.parametrize("call, match", [
    (lambda pc: conejax.restore(pc, np.zeros(10), image_shape=(4, 4), sigma=0.1),
     r"v must have shape \(16,\)"),
    (lambda pc: conejax.restore(pc, np.zeros(16), operators.identity(9), image_shape=(4, 4),
                                sigma=0.1), "image_shape"),
    (lambda pc: conejax.restore(pc, np.zeros(16), image_shape=(4, 4), sigma=-1.0), "sigma"),
    (lambda pc: conejax.restore(pc, np.zeros(16), image_shape=(4, 4), sigma=0.1,
                                output="last"), "output"),
    (lambda pc: conejax.restore(pc, np.zeros(4), image_shape=(2, 2), sigma=0.1),
     "larger than the image"),
    (lambda pc: conejax.restore(pc.cones, np.zeros(16), image_shape=(4, 4), sigma=0.1),
     "PatchCones"),
    (lambda pc: conejax.fit_patch_cones([np.zeros((8, 8))], 4, key=jax.random.key(0),
                                        rank=17), "rank 17"),
    (lambda pc: conejax.fit_patch_cones([-np.ones((8, 8))], 4, key=jax.random.key(0),
                                        rank=2, signed=False), "negative"),
    (lambda pc: conejax.fit_patch_cones([np.zeros((2, 8, 8))], 4, key=jax.random.key(0), rank=2),
     "grayscale"),
    (lambda pc: conejax.fit_patch_cones([np.ones((8, 8))], 4, key=jax.random.key(0), rank=2,
                                        free_degree=2), "free_degree must be one of"),
    (lambda pc: conejax.fit_patch_cones([np.ones((8, 8))], 4, key=jax.random.key(0), rank=2,
                                        signed=False, free_degree=1), "needs signed=True"),
    (lambda pc: dataclasses.replace(pc, free_degree=3), "free_degree must be one of"),
    (lambda pc: project_patches(pc, jnp.zeros((5, 16)), 0.1, codes=jnp.zeros((1, 4, 16))),
     r"codes must have shape \(1, 5, 16\)"),
])
def test_errors_name_the_argument(cones, call, match):
  with pytest.raises(ValueError, match=match):
    call(cones)


@pytest.mark.parametrize("dtype", DTYPES)
def test_auto_starts_from_the_previous_codes_with_the_same_answer(mixture, dtype):
  """solver="auto" is the active set without its APG warm start (the previous step's codes
  are the start): the same exact codes, so the image of ActiveSet() with its warm start."""
  images = _smooth_images(7, 1, 16, dtype)
  rng = np.random.default_rng(4)
  A = operators.mask((rng.random(256) < 0.5).astype(dtype))
  v = A.mv(images[0].reshape(-1))
  options = dict(image_shape=(16, 16), sigma=0.0, n_iter=4, output="data")
  auto = conejax.restore(mixture, v, A, **options)
  warm = conejax.restore(mixture, v, A, solver=conejax.solvers.ActiveSet(), **options)
  np.testing.assert_allclose(auto, warm, atol=20 * TOL[dtype])
  assert auto.dtype == dtype
