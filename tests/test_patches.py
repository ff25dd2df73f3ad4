"""Patch extraction, overlap averaging and the patch operator against scikit-learn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.feature_extraction.image import extract_patches_2d, reconstruct_from_patches_2d

import conejax
from conejax import operators

DTYPES = [np.float32, np.float64]
TRANSFORMS = [lambda f: f, jax.jit]
TOL = {np.float32: 1e-6, np.float64: 1e-14}


def _images(seed, shape, dtype):
  return np.random.default_rng(seed).random(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("patch_shape", [(1, 1), (3, 3), (5, 4), (11, 7)])
def test_extract_equals_scikit_learn(dtype, transform, patch_shape):
  images = _images(0, (3, 11, 9), dtype) if patch_shape != (11, 7) else _images(0, (3, 11, 7), dtype)
  out = transform(lambda x: conejax.extract_patches(x, patch_shape))(images)
  assert out.dtype == dtype
  for image, got in zip(images, np.asarray(out)):
    ref = extract_patches_2d(image, patch_shape).reshape(-1, patch_shape[0] * patch_shape[1])
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_reassemble_equals_scikit_learn_on_modified_patches(dtype, transform):
  rng = np.random.default_rng(1)
  patches = rng.random((2, 8 * 5, 12)).astype(dtype)  # 10 x 8 images, 3 x 4 patches
  out = transform(lambda P: conejax.reassemble_patches(P, (10, 8), (3, 4)))(patches)
  assert out.shape == (2, 10, 8) and out.dtype == dtype
  for P, got in zip(patches, np.asarray(out)):
    ref = reconstruct_from_patches_2d(P.reshape(-1, 3, 4).astype(np.float64), (10, 8))
    np.testing.assert_allclose(got, ref, rtol=10 * TOL[dtype], atol=10 * TOL[dtype])


@pytest.mark.parametrize("stride", [1, 2, 3, (2, 1), (4, 3)])
def test_strided_corners_cover_every_pixel_and_invert(stride):
  image = _images(2, (13, 12), np.float64)
  P = conejax.extract_patches(image, (4, 3), stride=stride)
  s_r, s_c = (stride, stride) if isinstance(stride, int) else stride
  rows = sorted(set(range(0, 10, s_r)) | {9})
  cols = sorted(set(range(0, 10, s_c)) | {9})
  ref = np.stack([image[i:i + 4, j:j + 3].reshape(-1) for i in rows for j in cols])
  np.testing.assert_array_equal(np.asarray(P), ref)
  np.testing.assert_allclose(conejax.reassemble_patches(P, (13, 12), (4, 3), stride=stride),
                             image, rtol=1e-14)


def test_strided_average_is_least_squares_image():
  """Overlap averaging is argmin_u ||E u - P||^2 = (E^T E)^-1 E^T P (E^T E is diagonal)."""
  rng = np.random.default_rng(3)
  E = np.asarray(operators.materialise(operators.patches((7, 6), (3, 2), stride=2),
                                       dtype=jnp.float64))
  P = rng.standard_normal(E.shape[0])
  ref = np.linalg.lstsq(E, P, rcond=None)[0]
  got = conejax.reassemble_patches(P.reshape(-1, 6), (7, 6), (3, 2), stride=2)
  np.testing.assert_allclose(np.asarray(got).reshape(-1), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("stride", [1, 2])
def test_operator_adjoint(dtype, transform, stride):
  A = operators.patches((9, 8), (3, 4), stride=stride)
  rng = np.random.default_rng(4)
  x = rng.standard_normal(A.in_size).astype(dtype)
  y = rng.standard_normal(A.out_size).astype(dtype)
  Ax = transform(A.mv)(x)
  ATy = transform(A.T.mv)(y)
  assert Ax.dtype == dtype and ATy.dtype == dtype
  lhs, rhs = float(np.dot(np.float64(Ax), y)), float(np.dot(x, np.float64(ATy)))
  assert abs(lhs - rhs) <= 100 * TOL[dtype] * (abs(lhs) + 1)


def test_operator_matches_extract_and_overlap_add_matrix():
  A = operators.patches((6, 5), 2, stride=(1, 2))
  image = _images(5, (6, 5), np.float64)
  np.testing.assert_array_equal(np.asarray(A.mv(image.reshape(-1))).reshape(-1, 4),
                                np.asarray(conejax.extract_patches(image, 2, stride=(1, 2))))
  M = np.asarray(operators.materialise(A, dtype=jnp.float64))
  assert set(np.unique(M)) == {0.0, 1.0} and np.all(M.sum(axis=1) == 1)
  MT = np.asarray(operators.materialise(A.T, dtype=jnp.float64))
  np.testing.assert_array_equal(MT, M.T)


def test_operator_composes_with_blur():
  blur = operators.blur(np.ones((3, 3)) / 9, (8, 8))
  A = operators.patches((8, 8), 4, stride=4) @ blur
  u = _images(6, (64,), np.float64)
  got = np.asarray(A.mv(u)).reshape(-1, 16)
  ref = np.asarray(conejax.extract_patches(blur.mv(u).reshape(8, 8), 4, stride=4))
  np.testing.assert_allclose(got, ref, rtol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vmap_equals_loop(dtype):
  images = _images(7, (4, 9, 10), dtype)
  f = lambda u: conejax.reassemble_patches(2 * conejax.extract_patches(u, 3, stride=2),
                                           (9, 10), 3, stride=2)
  batched = jax.vmap(f)(images)
  looped = np.stack([np.asarray(f(u)) for u in images])
  np.testing.assert_allclose(batched, looped, rtol=TOL[dtype])
  np.testing.assert_allclose(batched, 2 * images, rtol=10 * TOL[dtype])
  A = operators.patches((9, 10), 3, stride=2)
  np.testing.assert_array_equal(operators.apply(A, images.reshape(4, -1)),
                                np.stack([A.mv(u.reshape(-1)) for u in images]))


def test_counts_and_single_image():
  assert conejax.patches.n_patches((10, 8), (3, 4)) == 8 * 5
  assert conejax.patches.n_patches((10, 8), 3, stride=3) == 4 * 3  # corners 0, 3, 6, 7 / 0, 3, 5
  assert conejax.extract_patches(np.zeros((10, 8), np.float32), 3).shape == (48, 9)


@pytest.mark.parametrize("call, match", [
    (lambda: conejax.extract_patches(np.zeros((4, 4)), 5), "larger than the image"),
    (lambda: conejax.extract_patches(np.zeros((4, 4)), (2, 0)), "patch_shape"),
    (lambda: conejax.extract_patches(np.zeros((4, 4)), 2, stride=0), "stride"),
    (lambda: conejax.extract_patches(np.zeros((9, 9)), 2, stride=3), "at most the patch side"),
    (lambda: conejax.extract_patches(np.zeros(4), 2), r"\(H, W\) or \(N, H, W\)"),
    (lambda: conejax.extract_patches(np.zeros((4, 4), int), 2), "floating"),
    (lambda: conejax.reassemble_patches(np.zeros((8, 4)), (4, 4), 2), "Pass the same"),
    (lambda: operators.patches((4, 4, 1), 2), "image_shape"),
])
def test_errors_name_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_errors_under_jit():
  with pytest.raises(ValueError, match="larger than the image"):
    jax.jit(lambda x: conejax.extract_patches(x, 5))(jnp.zeros((4, 4)))
