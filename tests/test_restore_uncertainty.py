"""restore(..., uncertainty=True): the posterior mixture of patches and cones, its std map.

References: scikit-learn's Lasso for each cone's code and a per-pixel numpy loop over the
(patch, cone) mixture; exact consequences of the formula (one cone: only the overlap term,
zero where one patch covers a pixel or all patches agree; a per-pixel data step scales the
std by alpha / (M^2 + alpha)); jit, batches and per-image operators; a real image.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import Lasso

import conejax
from conejax import operators
from conejax._patch_cones import posterior_patches

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 2e-5, np.float64: 1e-10}
# APG keeps the programs cheap to compile (the exact solver is tested in test_restore.py).
SOLVER = conejax.solvers.APG(max_iter=500)


@pytest.fixture(scope="module")
def cones():
  """One cone of rank 12 on 4 x 4 patches, fitted on the left half of camera (64 x 64
  pixels); ``mixture`` splits its atoms into two cones of rank 6."""
  from skimage import data, transform
  camera = transform.resize(data.camera() / 255.0, (128, 128))
  pc = conejax.fit_patch_cones(camera[:, :64], 4, key=jax.random.key(0), rank=12,
                               n_train=3000, max_iter=50)
  W = np.asarray(pc.W[0])
  mixture = conejax.PatchCones(conejax.make_cones(np.stack([W[:, :6], W[:, 6:]])), (4, 4))
  return pc, mixture, camera[:, 64:].astype(np.float64)  # test images: the right half


def _restore(pc, v, A=None, **options):
  options = dict(dict(sigma=0.0, n_iter=1, solver=SOLVER), **options)
  return conejax.restore(pc, v, A, **options)


def _mixture_reference(X, dc, fits, p, nnz, geometry, weights):
  """Per pixel, the mixture over (patch j, cone k) with weights omega_ji p_jk: mean and
  variance by explicit loops over pixels and their covering patches."""
  (H, W), (a, b), _ = geometry
  index = np.asarray(conejax.extract_patches(np.arange(H * W, dtype=float).reshape(H, W),
                                             (a, b), stride=geometry[2])).astype(int)
  w = 1 / (1 + nnz) if weights == "sparsity" else np.ones(len(X))
  mean, var = np.zeros(H * W), np.zeros(H * W)
  for i in range(H * W):
    items = [(w[j] * p[k, j], dc[j, 0] + fits[k, j, list(index[j]).index(i)])
             for j in range(len(X)) if i in index[j] for k in range(fits.shape[0])]
    weight, value = np.array(items).T
    weight = weight / weight.sum()
    mean[i] = weight @ value
    var[i] = weight @ (value - mean[i]) ** 2
  return mean.reshape(H, W), var.reshape(H, W)


def test_posterior_patches_equal_lasso_codes_and_the_softmax_of_their_objectives(cones):
  _, mixture, scene = cones
  X = np.asarray(conejax.extract_patches(scene[40:52, 8:20], 4, stride=4))
  mu, T = 0.01, 0.002
  dc, fits, p, nnz = posterior_patches(mixture, jnp.asarray(X), mu, T, solver=SOLVER)
  objectives = []
  for k, W in enumerate(np.asarray(mixture.W, np.float64)):
    row = []
    for j, x in enumerate(X):
      r = x - x.mean()
      model = Lasso(alpha=mu / len(r), fit_intercept=False, tol=1e-14, max_iter=100000)
      c = model.fit(W, r).coef_
      np.testing.assert_allclose(fits[k, j], W @ c, atol=1e-6)
      row.append(0.5 * np.sum((W @ c - r) ** 2) + mu * np.abs(c).sum())
    objectives.append(row)
  objectives = np.array(objectives)
  ref = np.exp(-(objectives - objectives.min(0)) / T)
  np.testing.assert_allclose(p, ref / ref.sum(0), atol=1e-6)
  np.testing.assert_allclose(dc[:, 0], X.mean(1), atol=1e-12)
  assert float(np.max(np.min(p, 0))) > 0.01  # some patch mixes both cones


# One step on the identity without noise: the prior step acts on v itself (up to rounding).
ONE_STEP = dict(image_shape=(12, 12), tau=1.0, sigma_start=0.01)


@pytest.mark.parametrize("weights", ["uniform", "sparsity"])
def test_image_and_std_equal_the_brute_force_mixture(cones, weights):
  """The reference is the loop above on the library's per-patch posterior (checked against
  Lasso above) of v's patches at mu = tau s_1 and T = s_1^2."""
  _, mixture, scene = cones
  v = scene[40:52, 8:20]
  got = _restore(mixture, v.reshape(-1), uncertainty=True, weights=weights, **ONE_STEP)
  X = np.asarray(conejax.extract_patches(v, 4, stride=2))
  dc, fits, p, nnz = (np.asarray(a) for a in posterior_patches(
      mixture, jnp.asarray(X), 0.01, 0.01**2, solver=SOLVER))
  mean, var = _mixture_reference(X, dc, fits, p, nnz, ((12, 12), (4, 4), (2, 2)), weights)
  np.testing.assert_allclose(got.image, mean, atol=1e-10)
  np.testing.assert_allclose(got.std, np.sqrt(var), atol=1e-8)
  assert np.max(got.std) > 1e-3  # the cones disagree somewhere: the test sees the spread


def test_a_cold_posterior_is_the_best_cone(cones):
  _, mixture, scene = cones
  v = scene[40:52, 8:20].reshape(-1)
  plain = _restore(mixture, v, **ONE_STEP)
  cold = _restore(mixture, v, uncertainty=True, temperature=1e-30, **ONE_STEP)
  np.testing.assert_allclose(cold.image, plain, atol=1e-12)
  warm = _restore(mixture, v, uncertainty=True, **ONE_STEP)  # T = s_n^2: a mixture
  assert np.max(np.abs(warm.image - plain)) > 1e-4


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_cone_keeps_the_image_and_only_the_overlap_spread(cones, dtype):
  pc, _, scene = cones
  v = scene[40:56, 8:24].astype(dtype).reshape(-1)
  options = dict(image_shape=(16, 16), sigma=0.05, n_iter=2, weights="uniform")
  plain = _restore(pc, v, **options)
  got = _restore(pc, v, uncertainty=True, **options)
  assert got.image.dtype == got.std.dtype == dtype
  # p = 1 exactly: the same arithmetic, in a separately compiled program (the last prior step
  # outside the loop), whose fusion may move the last bit; a mixing error would be >> 4 ulp.
  np.testing.assert_allclose(got.image, plain, rtol=0,
                             atol=4 * np.finfo(dtype).eps * np.max(np.abs(plain)))
  # One cone: std^2 = sum_j omega_ji (x_j(i) - z_i)^2, zero exactly where a single patch
  # covers the pixel (the four 2 x 2 corners at stride 2) ...
  P = operators.patches((16, 16), 4, stride=2)
  cover = np.asarray(P.T.mv(jnp.ones(P.out_size, dtype))).reshape(16, 16)
  assert np.sum(cover == 1) == 16
  np.testing.assert_array_equal(np.asarray(got.std)[cover == 1], 0)
  assert np.all(np.asarray(got.std) >= 0) and np.max(got.std) > 1e-3
  # ... and everywhere on a constant image, whose patches all agree.
  flat = _restore(pc, np.full(256, 0.3, dtype), uncertainty=True, **options)
  np.testing.assert_allclose(flat.image, 0.3, rtol=10 * np.finfo(dtype).eps)
  np.testing.assert_allclose(flat.std, 0, atol=10 * np.finfo(dtype).eps)


def test_jit_batches_and_every_operator(cones):
  """float32 (float64 is covered above); blur: batch == loop, jit == eager; masks: one per
  image under vmap == loop; downsample and resize: finite, non-negative maps."""
  _, mixture, scene = cones
  dtype = np.float32
  images = np.stack([scene[40:56, 8:24], scene[72:88, 24:40]]).astype(dtype).reshape(2, -1)
  rng = np.random.default_rng(2)
  options = dict(image_shape=(16, 16), n_iter=1, cg_iter=3, uncertainty=True)
  blur = operators.blur(np.ones((3, 3)) / 9, (16, 16))
  V = (jax.vmap(blur.mv)(images) + 0.01 * rng.standard_normal((2, 256))).astype(dtype)
  batch = _restore(mixture, V, blur, sigma=0.01, **options)
  assert isinstance(batch, conejax.Restoration) and batch.std.shape == (2, 16, 16)
  assert batch.image.dtype == batch.std.dtype == dtype
  looped = [_restore(mixture, v, blur, sigma=0.01, **options) for v in V]
  jitted = jax.jit(lambda V: _restore(mixture, V, blur, sigma=0.01, **options))(V)
  for field in ("image", "std"):
    loop = np.stack([getattr(r, field) for r in looped])
    np.testing.assert_allclose(getattr(batch, field), loop, atol=TOL[dtype])
    np.testing.assert_allclose(getattr(jitted, field), getattr(batch, field), atol=TOL[dtype])
  masks = jax.vmap(operators.mask)(jnp.asarray(rng.random((2, 256)) < 0.6, dtype))
  mv = jax.vmap(lambda A, u: A.mv(u))(masks, images)
  per_image = jax.vmap(lambda A, v: _restore(mixture, v, A, output="data", **options))(masks,
                                                                                       mv)
  for i in range(2):
    one = _restore(mixture, mv[i], operators.mask(masks.weights[i]), output="data", **options)
    np.testing.assert_allclose(per_image.image[i], one.image, atol=TOL[dtype])
    np.testing.assert_allclose(per_image.std[i], one.std, atol=TOL[dtype])
  for A in (operators.downsample(2, (16, 16)), operators.resize((16, 16), (10, 10))):
    got = _restore(mixture, jax.vmap(A.mv)(images), A, **options)
    assert got.image.dtype == got.std.dtype == dtype
    assert np.all(np.isfinite(got.std)) and np.all(got.std >= 0) and np.max(got.std) > 0


@pytest.fixture(scope="module")
def inpainted(cones):
  """Half the pixels of a 48 x 48 crop of camera's right half (the cones saw the left
  half), noiseless, restored with both outputs."""
  _, mixture, scene = cones
  truth = scene[40:88, 8:56]
  M = (np.random.default_rng(3).random(truth.size) < 0.5).astype(np.float64)
  A = operators.mask(M)
  options = dict(image_shape=(48, 48), n_iter=6, sigma_start=0.2, uncertainty=True)
  restore = lambda **more: _restore(mixture, A.mv(truth.reshape(-1)), A, **options, **more)
  return truth, M, restore


def test_std_flags_the_missing_pixels_and_ranks_the_error_of_a_real_image(inpainted):
  truth, M, restore = inpainted
  for output in ("prior", "data"):
    got = restore(output=output)
    std = np.asarray(got.std).reshape(-1)
    error = np.abs(np.asarray(got.image) - truth).reshape(-1)
    if output == "data":  # observed pixels kept exactly: no error, no std
      np.testing.assert_array_equal(std[M == 1], 0)
      assert np.max(error[M == 1]) < 1e-12 and np.mean(std[M == 0]) > 1e-3
      std, error = std[M == 0], error[M == 0]  # the ranking among the missing pixels
    order = np.argsort(std)
    top, bottom = error[order[-len(std) // 10:]].mean(), error[order[:len(std) // 2]].mean()
    assert top > 3 * bottom, (output, top, bottom)


def test_a_mask_data_step_scales_the_std_by_its_gain(inpainted):
  truth, M, restore = inpainted
  sigma, s_n = 0.05, 0.1
  prior = restore(sigma=sigma, sigma_end=s_n)
  data = restore(sigma=sigma, sigma_end=s_n, output="data")
  alpha = (sigma / s_n) ** 2  # lam sigma^2 / s_n^2
  v = M * truth.reshape(-1)
  expected = (M * v + alpha * prior.image.reshape(-1)) / (M + alpha)
  np.testing.assert_allclose(data.image.reshape(-1), expected, atol=1e-10)
  np.testing.assert_allclose(data.std.reshape(-1), alpha / (M + alpha) * prior.std.reshape(-1),
                             atol=1e-12)


@pytest.mark.parametrize("options, match", [
    (dict(uncertainty=True, output="data", A=operators.blur(np.ones((3, 3)) / 9, (8, 8))),
     "output='prior'"),
    (dict(temperature=0.1), "temperature goes with uncertainty=True"),
    (dict(uncertainty=True, temperature=-1.0), "temperature must be finite and > 0"),
    (dict(uncertainty="yes"), "uncertainty must be True or False"),
])
def test_errors_name_the_fix(cones, options, match):
  A = options.pop("A", None)
  with pytest.raises(ValueError, match=match):
    conejax.restore(cones[0], np.zeros(64), A, image_shape=(8, 8), sigma=0.1, **options)
