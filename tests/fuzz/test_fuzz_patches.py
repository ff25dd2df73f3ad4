"""Fuzz cases for images of any size: extract_patches, reassemble_patches, the patches
operator, fit_patch_cones and restore (bad input, scale, NaN, jit, vmap, batches).

Sizes are tiny and fixed (12 x 12 images, 4 x 4 patches, rank 4) so compiled programs are
reused from case to case; restore runs two HQS iterations.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.feature_extraction.image import extract_patches_2d, reconstruct_from_patches_2d

import conejax
from conejax import operators as ops
from fuzz_common import assert_close, raises_clearly, rng

SIDE, P = 12, 4
SHAPE = (SIDE, SIDE)


def _images(seed=0, n=3, side=SIDE):
  """Piecewise-smooth float32 images in [0, 1]."""
  r = rng(seed)
  y, x = np.mgrid[:side, :side] / side
  out = [0.4 + 0.3 * np.sin(2 * np.pi * (r.random() * x + r.random() * y))
         + 0.2 * (x > r.random()) for _ in range(n)]
  return np.clip(np.stack(out), 0, 1).astype(np.float32)


IMAGES = _images()
KEY = jax.random.key(0)


@functools.lru_cache(maxsize=None)
def _cones(scale=1.0):
  return conejax.fit_patch_cones(IMAGES * np.float32(scale), P, key=KEY, rank=4, max_iter=30,
                                 n_train=400)


# ------------------------------------------------------------------- patches
BAD_EXTRACT = {
    "patch_too_large": (dict(patch_shape=SIDE + 1), "larger than the image"),
    "patch_zero": (dict(patch_shape=0), "must be a positive integer"),
    "patch_float": (dict(patch_shape=2.5), "must be an int or a pair"),
    "patch_triple": (dict(patch_shape=(2, 2, 2)), "must be an int or a pair"),
    "stride_zero": (dict(stride=0), "must be a positive integer"),
    "stride_above_patch": (dict(stride=P + 1), "stride"),
    "images_1d": (dict(images=np.ones(SIDE, np.float32)), r"\(H, W\) or \(N, H, W\)"),
    "images_4d": (dict(images=np.ones((1, 1, SIDE, SIDE), np.float32)), r"\(H, W\) or"),
    "images_int": (dict(images=np.ones(SHAPE, np.int32)), "dtype int32"),
    "images_complex": (dict(images=np.ones(SHAPE, np.complex64)), "complex"),
}


@pytest.mark.parametrize("bad", BAD_EXTRACT)
def test_extract_patches_bad_input(bad):
  options, match = BAD_EXTRACT[bad]
  options = dict(dict(images=IMAGES[0], patch_shape=P), **options)
  raises_clearly(ValueError, match, conejax.extract_patches, options.pop("images"), **options)


BAD_REASSEMBLE = {
    "wrong_count": (dict(patches=np.ones((5, P * P), np.float32)), "Pass the same image_shape"),
    "wrong_length": (dict(patches=np.ones((81, P * P + 1), np.float32)), "Pass the same"),
    "wrong_stride": (dict(stride=2), "Pass the same image_shape and stride"),
    "patches_1d": (dict(patches=np.ones(P * P, np.float32)), r"\(n_patches, p q\)"),
    "image_shape_bad": (dict(image_shape=(SIDE, 0)), "must be a positive integer"),
}


@pytest.mark.parametrize("bad", BAD_REASSEMBLE)
def test_reassemble_patches_bad_input(bad):
  options, match = BAD_REASSEMBLE[bad]
  good = np.asarray(conejax.extract_patches(IMAGES[0], P))
  options = dict(dict(patches=good, image_shape=SHAPE, patch_shape=P), **options)
  raises_clearly(ValueError, match, conejax.reassemble_patches, options.pop("patches"),
                 options.pop("image_shape"), options.pop("patch_shape"), **options)


@pytest.mark.parametrize("shape", [(P, P), (SIDE, P), (5, 9), (SIDE, SIDE)])
def test_extract_patches_equals_scikit_learn_for_every_image_shape(shape):
  image = rng(3).random(shape).astype(np.float32)
  patch = (min(P, shape[0]), min(3, shape[1]))
  ours = np.asarray(conejax.extract_patches(image, patch))
  theirs = extract_patches_2d(image, patch).reshape(len(ours), -1)
  np.testing.assert_array_equal(ours, theirs)
  back = conejax.reassemble_patches(theirs, shape, patch)
  np.testing.assert_allclose(back, reconstruct_from_patches_2d(theirs.reshape(-1, *patch),
                                                               shape), rtol=1e-6)


@pytest.mark.parametrize("stride", [1, 2, 3, (1, 4), (4, 2)])
def test_reassembly_inverts_extraction_at_every_stride(stride):
  patches = conejax.extract_patches(IMAGES, P, stride=stride)
  np.testing.assert_allclose(conejax.reassemble_patches(patches, SHAPE, P, stride=stride),
                             IMAGES, rtol=1e-6)


@pytest.mark.parametrize("c", [1e-30, 1e-10, 1e10, 1e30])
def test_patches_are_exactly_linear_at_any_scale(c):
  scaled = np.asarray(conejax.extract_patches(IMAGES * np.float32(c), P, stride=2))
  np.testing.assert_array_equal(scaled, np.asarray(
      conejax.extract_patches(IMAGES, P, stride=2)) * np.float32(c))


def test_patches_keep_nan_where_it_is():
  image = IMAGES[0].copy()
  image[5, 6] = np.nan
  patches = np.asarray(conejax.extract_patches(image, P))
  covering = np.isnan(patches).any(axis=1)
  assert covering.sum() == P * P  # the 16 patches that contain pixel (5, 6)
  assert np.isnan(np.asarray(conejax.reassemble_patches(patches, SHAPE, P))[5, 6])


def test_patches_operator_adjoint_and_jit():
  A = ops.patches(SHAPE, P, stride=3)
  u, w = rng(4).random(A.in_size), rng(5).random(A.out_size)
  np.testing.assert_allclose(np.dot(A.mv(u), w), np.dot(u, A.T.mv(w)), rtol=1e-5)
  np.testing.assert_array_equal(jax.jit(A.mv)(u), A.mv(u))


@pytest.mark.parametrize("bad, match", [
    (dict(image_shape=(P - 1, SIDE)), "larger than the image"),
    (dict(stride=-1), "must be a positive integer"),
])
def test_patches_operator_bad_input(bad, match):
  options = dict(dict(image_shape=SHAPE, patch_shape=P), **bad)
  raises_clearly(ValueError, match, ops.patches, options.pop("image_shape"),
                 options.pop("patch_shape"), **options)


# --------------------------------------------------------- fit_patch_cones
BAD_FIT = {
    "rank_above_pixels": (dict(rank=P * P + 1), "exceeds the 16 pixels"),
    "rank_zero": (dict(rank=0), "rank must be a positive integer"),
    "n_cones_zero": (dict(n_cones=0), "n_cones must be a positive integer"),
    "patch_too_large": (dict(patch_shape=SIDE + 1), "larger than the image|patch"),
    "nan_image": (dict(images=np.where(IMAGES == IMAGES[0, 0, 0], np.nan, IMAGES)), "NaN"),
    "negative_unsigned": (dict(images=IMAGES - 1, signed=False), "negative"),
    "flat_images": (dict(images=np.full((2, SIDE, SIDE), 0.5, np.float32)), "flat"),
    "int_images": (dict(images=(IMAGES * 9).astype(np.int32)), "dtype int32"),
}


@pytest.mark.parametrize("bad", BAD_FIT)
def test_fit_patch_cones_bad_input(bad):
  options = dict(dict(images=IMAGES, patch_shape=P, rank=4, max_iter=2, n_train=200),
                 **BAD_FIT[bad][0])
  raises_clearly(ValueError, BAD_FIT[bad][1], conejax.fit_patch_cones, options.pop("images"),
                 options.pop("patch_shape"), key=KEY, **options)


def test_fit_patch_cones_under_jit_names_the_alternative():
  with pytest.raises(TypeError, match="fit_patch_cones"):
    jax.jit(lambda X: conejax.fit_patch_cones(X, P, key=KEY, rank=4).W)(IMAGES)


@pytest.mark.parametrize("c", [1e-20, 1e20])
def test_fit_patch_cones_is_scale_free(c):
  """Unit atoms of c-scaled training images are the atoms of the images (float32)."""
  assert_close(_cones(c).W, _cones().W, rtol=1e-4)


# ------------------------------------------------------------------- restore
NOISY = (IMAGES + 0.05 * rng(6).standard_normal(IMAGES.shape)).reshape(3, -1).astype(np.float32)
OPTIONS = dict(image_shape=SHAPE, sigma=0.05, n_iter=2, cg_iter=4)
BLUR = ops.blur(np.ones((3, 3)) / 9, SHAPE)


@functools.lru_cache(maxsize=None)
def _restored(kind="identity"):
  A = None if kind == "identity" else BLUR
  V = NOISY if A is None else np.stack([A.mv(v) for v in NOISY])
  return V, A, np.asarray(conejax.restore(_cones(), V, A, **OPTIONS))


BAD_RESTORE = {
    "cones_not_patch": (dict(cones=conejax.make_cones(np.ones((1, 16, 4), np.float32))),
                        "PatchCones"),
    "A_matrix": (dict(A=np.eye(SIDE * SIDE)), "LinearOperator"),
    "A_size": (dict(A=ops.identity(SIDE * SIDE + 1)), "A maps signals of size 145"),
    "v_shape": (dict(v=NOISY[:, :-1]), r"v must have shape \(144,\)"),
    "v_3d": (dict(v=NOISY[None]), r"v must have shape"),
    "v_nan": (dict(v=np.where(NOISY > 0.9, np.nan, NOISY)), "NaN or Inf"),
    "v_int": (dict(v=(NOISY * 9).astype(np.int32)), "dtype int32"),
    "image_shape_small": (dict(image_shape=(P - 1, 48)), "larger than the image"),
    "image_shape_mismatch": (dict(image_shape=(SIDE, SIDE + 1)), "image_shape"),
    "sigma_negative": (dict(sigma=-0.1), "sigma must be finite and >= 0"),
    "sigma_nan": (dict(sigma=float("nan")), "sigma must be finite"),
    "sigma_vector": (dict(sigma=np.ones(3)), "sigma must be a scalar"),
    "lam_zero": (dict(lam=0.0), "lam must be finite and > 0"),
    "tau_negative": (dict(tau=-1.0), "tau must be finite and >= 0"),
    "data_range_zero": (dict(data_range=0.0), "data_range must be finite and > 0"),
    "data_range_inf": (dict(data_range=float("inf")), "data_range must be finite"),
    "sigma_start_zero": (dict(sigma_start=0.0), "sigma_start must be finite and > 0"),
    "n_iter_zero": (dict(n_iter=0), "n_iter must be a positive integer"),
    "cg_iter_float": (dict(cg_iter=2.5), "cg_iter must be a positive integer"),
    "stride_zero": (dict(stride=0), "must be a positive integer"),
    "output": (dict(output="both"), "output must be one of"),
    "weights": (dict(weights="bm3d"), "weights must be one of"),
    "solver": (dict(solver="fast"), "solver must be one of"),
}


@pytest.mark.parametrize("bad", BAD_RESTORE)
def test_restore_bad_input(bad):
  options = dict(OPTIONS)
  options.update(BAD_RESTORE[bad][0])
  cones, v, A = options.pop("cones", _cones()), options.pop("v", NOISY), options.pop("A", None)
  raises_clearly(ValueError, BAD_RESTORE[bad][1], conejax.restore, cones, v, A, **options)


@pytest.mark.parametrize("kind", ["identity", "blur"])
@pytest.mark.parametrize("c", [1e-30, 1e-10, 3.7, 1e10, 1e30])
def test_restore_is_equivariant_to_the_scale_of_the_data(kind, c):
  """restore(c v, sigma = c sigma) = c restore(v, sigma), float32: the default schedule is
  in units of the data, each image solved at unit scale."""
  V, A, expected = _restored(kind)
  options = dict(OPTIONS, sigma=OPTIONS["sigma"] * c)
  out = np.asarray(conejax.restore(_cones(), V * np.float32(c), A, **options), np.float64) / c
  assert_close(out, expected, rtol=3e-4)


def test_restore_with_a_data_range_equals_the_scaled_problem():
  V, A, _ = _restored()
  one = np.asarray(conejax.restore(_cones(), V, A, data_range=1.0, **OPTIONS))
  c = np.float32(255)
  eight_bit = np.asarray(conejax.restore(_cones(), V * c, A, data_range=255.0,
                                         **dict(OPTIONS, sigma=OPTIONS["sigma"] * 255)))
  assert_close(eight_bit / c, one, rtol=3e-4)


def test_restore_of_zero_observations_is_zero():
  out = np.asarray(conejax.restore(_cones(), np.zeros_like(NOISY), **OPTIONS))
  np.testing.assert_array_equal(out, 0)


def test_restore_batch_single_and_jit_agree():
  V, A, expected = _restored("blur")
  single = conejax.restore(_cones(), V[1], A, **OPTIONS)
  assert single.shape == SHAPE
  assert_close(single, expected[1], rtol=1e-5)
  jitted = jax.jit(lambda V: conejax.restore(_cones(), V, A, **OPTIONS))(V)
  assert_close(jitted, expected, rtol=1e-5)


def test_restore_nan_image_under_jit_is_nan_and_leaves_the_others():
  V, A, expected = _restored("blur")
  V = V.copy()
  V[1, 7] = np.nan
  out = np.asarray(jax.jit(lambda V: conejax.restore(_cones(), V, A, **OPTIONS))(V))
  assert np.all(np.isnan(out[1]))
  assert_close(out[[0, 2]], expected[[0, 2]], rtol=1e-5)


def test_restore_float64_in_float64():
  with jax.enable_x64(True):
    cones = jax.tree_util.tree_map(lambda w: w.astype(np.float64), _cones())
    out = conejax.restore(cones, NOISY.astype(np.float64), **OPTIONS)
    assert out.dtype == np.float64
  assert_close(out, _restored()[2], rtol=1e-3)
