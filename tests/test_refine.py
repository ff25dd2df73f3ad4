"""Refinements (Blend, Keep, Fill): against closed forms, numpy solves and scipy.ndimage, as
options of reconstruct and restore, under jit and vmap, in float32 and float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import conejax
from conejax import operators

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 2e-5, np.float64: 1e-12}
SHAPE = (12, 10)
M = SHAPE[0] * SHAPE[1]


def _data(dtype, n=5, seed=0):
  rng = np.random.default_rng(seed)
  U = rng.random((n, M)).astype(dtype)       # cone estimates
  V = rng.random((n, M)).astype(dtype)       # observations
  mask = (rng.random((n, M)) > 0.4).astype(dtype)
  return U, V, mask, rng


def _fill_reference(v, u, observed, width, clip=True):
  """experiments/inverse_problems.py's fill_residual (scipy.ndimage, numpy) for 0/1 masks."""
  smooth = (lambda x: ndimage.gaussian_filter(x, width)) if width > 0 else (lambda x: x)
  residual = ((v - u) * observed).reshape(SHAPE)
  correction = (smooth(residual) / np.maximum(smooth(observed.reshape(SHAPE)), 1e-3))
  fill = u + correction.reshape(-1)
  return np.where(observed > 0, v, np.maximum(fill, 0) if clip else fill)


@pytest.mark.parametrize("dtype", DTYPES)
def test_blend_is_the_weighted_mean_for_the_identity_and_on_a_masks_observed_pixels(dtype):
  U, V, mask, _ = _data(dtype)
  for alpha in (0.0, 0.3, 1.0):
    got = conejax.refine(conejax.Blend(alpha), V, U)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, alpha * V + (1 - alpha) * U, rtol=TOL[dtype])
  A = jax.vmap(operators.mask)(jnp.asarray(mask))
  got = conejax.refine(conejax.Blend(0.3), V * mask, U, A, per_sample_operator=True)
  np.testing.assert_allclose(got, np.where(mask > 0, 0.3 * V + 0.7 * U, U), rtol=TOL[dtype])
  np.testing.assert_array_equal(conejax.refine(conejax.Blend(0.0), V, U, A,
                                               per_sample_operator=True), U)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["blur", "downsample"])
def test_blend_solves_the_map_normal_equations_through_any_operator(dtype, name):
  U, _, _, rng = _data(dtype)
  A = (operators.blur(np.outer([1, 2, 1], [1, 2, 1]) / 16, SHAPE) if name == "blur"
       else operators.downsample(2, SHAPE))
  V = rng.random((len(U), A.out_size)).astype(dtype)
  B = np.asarray(operators.materialise(A, dtype=jnp.float64))
  alpha = 0.4
  lhs = alpha * B.T @ B + (1 - alpha) * np.eye(M)
  ref = np.linalg.solve(lhs, (alpha * V @ B + (1 - alpha) * U).T).T
  got = conejax.refine(conejax.Blend(alpha, cg_iter=100), V, U, A)
  np.testing.assert_allclose(got, ref, rtol=0, atol=50 * TOL[dtype])
  if name == "blur":  # invertible but ill-conditioned: alpha = 1 is B^-1 v, not for CG
    return
  # With alpha = 1 (the data alone) from u: the point of {A x = v} nearest u.
  got = np.asarray(conejax.refine(conejax.Blend(1.0, cg_iter=200), V, U, A), np.float64)
  ref = U + (V - U @ B.T) @ np.linalg.pinv(B).T
  np.testing.assert_allclose(got, ref, rtol=0, atol=200 * TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_keep_keeps_the_explained_observed_pixels(dtype):
  U, V, mask, _ = _data(dtype)
  for threshold in (0.0, 0.2, 0.5):
    got = conejax.refine(conejax.Keep(threshold), V, U)
    np.testing.assert_array_equal(got, np.where(np.abs(V - U) < threshold, V, U))
  A = jax.vmap(operators.mask)(jnp.asarray(mask))
  got = conejax.refine(conejax.Keep(0.3), V * mask, U, A, per_sample_operator=True)
  np.testing.assert_array_equal(got, np.where((mask > 0) & (np.abs(V - U) < 0.3), V, U))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [0.0, 0.7, 1.5, 4.0])  # 4: a radius (16) beyond the image
def test_fill_matches_the_scipy_normalised_convolution(dtype, width):
  U, V, mask, _ = _data(dtype)
  A = jax.vmap(operators.mask)(jnp.asarray(mask))
  got = conejax.refine(conejax.Fill(width, SHAPE), V * mask, U, A, per_sample_operator=True)
  assert got.dtype == dtype
  for g, v, u, o in zip(np.asarray(got), V.astype(np.float64), U.astype(np.float64), mask):
    np.testing.assert_allclose(g, _fill_reference(v, u, o, width), rtol=0,
                               atol=10 * TOL[dtype])
  # One shared mask: the same as the per-sample one repeated.
  shared = conejax.refine(conejax.Fill(width, SHAPE), V * mask[0], U, operators.mask(mask[0]))
  np.testing.assert_allclose(shared[0], got[0], rtol=TOL[dtype], atol=TOL[dtype])
  # A fill below 0 (u - 3): clipped at 0 by default, kept with nonnegative=False.
  for flag in (False, True):
    got = conejax.refine(conejax.Fill(width, SHAPE, nonnegative=flag), V * mask, U - 3, A,
                         per_sample_operator=True)
    for g, v, u, o in zip(np.asarray(got), V.astype(np.float64), U - 3.0, mask):
      want = _fill_reference(v, u, o, width, clip=flag)
      np.testing.assert_allclose(g, want, rtol=0, atol=10 * TOL[dtype])
      assert flag or width > 0 or np.any(want < 0)  # width 0: the clip matters


@pytest.mark.parametrize("refinement", [conejax.Blend(0.3), conejax.Keep(0.2),
                                        conejax.Fill(1.0, SHAPE)])
def test_jit_vmap_and_the_loop_agree(refinement):
  U, V, mask, _ = _data(np.float32)
  A = operators.mask(mask[0])
  V = V * mask[0]
  batch = conejax.refine(refinement, V, U, A)
  loop = np.stack([conejax.refine(refinement, v, u, A) for v, u in zip(V, U)])
  np.testing.assert_allclose(batch, loop, rtol=1e-6, atol=1e-7)
  jitted = jax.jit(lambda V, U: conejax.refine(refinement, V, U, A))(V, U)
  np.testing.assert_allclose(jitted, batch, rtol=1e-6, atol=1e-7)
  stacked = conejax.refine(refinement, V, np.stack([U, 2 * U], axis=1), A)  # (N, K, m)
  np.testing.assert_allclose(stacked[:, 1], conejax.refine(refinement, V, 2 * U, A),
                             rtol=1e-6, atol=1e-7)


def test_blend_is_differentiable_in_v():
  U, V, _, _ = _data(np.float64)
  g = jax.grad(lambda v: conejax.refine(conejax.Blend(0.3), v, U[0]).sum())(jnp.asarray(V[0]))
  np.testing.assert_allclose(g, 0.3 * np.ones(M), rtol=1e-12)


def _cones(dtype, seed=1, K=2, d=6):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.random((K, M, d)).astype(dtype)), rng


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("select", ["each", "best"])
def test_reconstruct_refine_equals_refine_of_its_estimate(dtype, select):
  W, rng = _cones(dtype)
  mask = (rng.random((4, M)) > 0.5).astype(dtype)
  V = (rng.random((4, M)) * mask).astype(dtype)
  A = jax.vmap(operators.mask)(jnp.asarray(mask))
  for refinement, loss in ((conejax.Fill(0.8, SHAPE), "l2"), (conejax.Blend(0.2), "l2"),
                           (conejax.Keep(0.1), "l1")):
    plain = conejax.reconstruct(W, V, A, select=select, per_sample_operator=True, loss=loss)
    out = conejax.reconstruct(W, V, A, select=select, per_sample_operator=True, loss=loss,
                              refine=refinement)
    want = conejax.refine(refinement, V, plain.u, A, per_sample_operator=True)
    np.testing.assert_allclose(out.u, want, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_array_equal(out.h, plain.h)
    assert np.max(np.abs(np.asarray(out.u) - np.asarray(plain.u))) > 1e-3  # it did something
  # A shared operator, a single sample and a single dictionary.
  blur = operators.blur(np.ones((3, 3)) / 9, SHAPE)
  v = jnp.asarray(rng.random(M).astype(dtype))
  out = conejax.reconstruct(W[0], v, blur, refine=conejax.Blend(0.5))
  want = conejax.refine(conejax.Blend(0.5), v, conejax.reconstruct(W[0], v, blur).u, blur)
  np.testing.assert_allclose(out.u, want, rtol=TOL[dtype], atol=TOL[dtype])


def test_restore_refine_equals_refine_of_the_restored_image():
  rng = np.random.default_rng(3)
  images = np.cumsum(np.cumsum(rng.random((3, 16, 16)), 1), 2)
  images = (images / images.max()).astype(np.float32)
  pc = conejax.fit_patch_cones(images[:2], 4, key=jax.random.key(0), rank=4, n_cones=2,
                               max_iter=20)
  mask = (rng.random(256) > 0.5).astype(np.float32)
  A = operators.mask(mask)
  v = 3.0 * images[2].reshape(-1) * mask  # not in [0, 1]: refine works in v's units
  options = dict(image_shape=(16, 16), sigma=0.0, n_iter=3, solver="apg")
  plain = conejax.restore(pc, v, A, **options)
  for refinement in (conejax.Fill(1.0, (16, 16)), conejax.Keep(0.05)):
    got = conejax.restore(pc, v, A, refine=refinement, **options)
    want = conejax.refine(refinement, v, plain.reshape(-1), A).reshape(16, 16)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_errors_name_the_argument_and_the_fix():
  U, V, mask, _ = _data(np.float32)
  blur = operators.blur(np.ones((3, 3)) / 9, SHAPE)
  with pytest.raises(ValueError, match="Keep needs an operator that acts pixel by pixel"):
    conejax.refine(conejax.Keep(0.1), V, U, blur)
  with pytest.raises(ValueError, match=r"Fill.image_shape \(4, 4\) has 16 pixels"):
    conejax.refine(conejax.Fill(1.0, (4, 4)), V, U)
  with pytest.raises(ValueError, match=r"Blend.alpha must be a number in \[0, 1\]"):
    conejax.Blend(1.5)
  with pytest.raises(ValueError, match="Keep.threshold must be a finite number >= 0"):
    conejax.Keep(-1.0)
  with pytest.raises(ValueError, match="Fill.image_shape must be"):
    conejax.Fill(1.0, (12,))
  with pytest.raises(ValueError, match="refine must be conejax.Blend"):
    conejax.refine("blend", V, U)
  with pytest.raises(ValueError, match="U must have shape"):
    conejax.refine(conejax.Blend(0.5), V, U[:2])
  with pytest.raises(ValueError, match="U contains NaN"):
    conejax.refine(conejax.Blend(0.5), V, np.full_like(U, np.nan))
  W, _ = _cones(np.float32)
  with pytest.raises(ValueError, match="select='posterior'"):
    conejax.reconstruct(W, V, select="posterior", temperature=1.0, refine=conejax.Blend(0.5))
  with pytest.raises(ValueError, match="operators.mask"):
    conejax.reconstruct(W, V, weights=mask, refine=conejax.Fill(1.0, SHAPE))
  with pytest.raises(ValueError, match="Keep needs"):
    conejax.reconstruct(W, V[:, :30], operators.downsample(2, SHAPE), refine=conejax.Keep(0.1))
