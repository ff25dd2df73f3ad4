"""Linear operators: common properties for every operator, then each against a reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage, signal

from conejax import operators as ops

SHAPE = (8, 6)
M = SHAPE[0] * SHAPE[1]
DTYPES = [np.float32, np.float64]
ADJOINT_TOL = {np.float32: 1e-5, np.float64: 1e-10}
BOUNDARIES = [("zero", "fill", "constant"), ("periodic", "wrap", "wrap"),
              ("reflect", "symm", "reflect")]  # ours, scipy.signal, scipy.ndimage
_rng = np.random.default_rng(0)
KERNEL_3, KERNEL_45, KERNEL_9 = (_rng.standard_normal(s) for s in [(3, 3), (4, 5), (9, 9)])
MASK = (_rng.random(M) > 0.3).astype(np.float64)
DENSE = _rng.standard_normal((5, M))
INDICES = np.array([3, 0, 47, 12, 12, 30])
# A real filter's response is symmetric under f -> -f: the notch of a +-(2, 1) frequency band.
NOTCH = np.ones(SHAPE)
NOTCH[[2, -2], [1, -1]] = 0.0
NOTCH[[2, -2], [-1, 1]] = 0.25

FACTORIES = {
    "identity": lambda: ops.identity(M),
    "matrix": lambda: ops.matrix(DENSE),  # gaussian_sensing builds the same class
    "mask": lambda: ops.mask(MASK),
    "blur_zero_direct": lambda: ops.blur(KERNEL_3, SHAPE, boundary="zero", method="direct"),
    "blur_periodic_direct": lambda: ops.blur(KERNEL_45, SHAPE, boundary="periodic"),
    "blur_reflect_auto_fft": lambda: ops.blur(KERNEL_9, SHAPE, boundary="reflect"),  # the slow one
    "downsample": lambda: ops.downsample(2, SHAPE),
    "fourier_filter": lambda: ops.fourier_filter(NOTCH, SHAPE),
    "subsample": lambda: ops.subsample(INDICES, M),
    "transposed": lambda: ops.matrix(DENSE).T,
    "composed": lambda: ops.compose(
        ops.downsample(2, SHAPE), ops.blur(KERNEL_45, SHAPE, boundary="reflect"), ops.mask(MASK)),
    "sum_scaled": lambda: 2.0 * ops.blur(KERNEL_3, SHAPE) - ops.mask(MASK),
    "resize_down": lambda: ops.resize(SHAPE, (3, 4)),   # factors 8/3 and 3/2
    "resize_up": lambda: ops.resize(SHAPE, (11, 9)),
}
ALL = pytest.mark.parametrize("name", sorted(FACTORIES))
# Unoptimised XLA compiles these tiny test programs about three times faster.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _signals(A, dtype, n=None, seed=1):
  rng = np.random.default_rng(seed)
  batch = () if n is None else (n,)
  return (rng.standard_normal(batch + (A.in_size,)).astype(dtype),
          rng.standard_normal(batch + (A.out_size,)).astype(dtype))


@functools.lru_cache(maxsize=None)
def _common(name, dtype):
  """Everything the common tests compare, from one jitted call per operator and dtype."""
  A = FACTORIES[name]()
  (x, y), (z, _), (X, Y) = _signals(A, dtype), _signals(A, dtype, seed=2), _signals(A, dtype, 2)

  @fast_jit
  def compute(A, x, y, z, X, Y):
    out = dict(Ax=A.mv(x), ATy=A.T.mv(y), ATAx=A.T.mv(A.mv(x)),
               grad=jax.grad(lambda u: jnp.sum(A.mv(u) ** 2))(x))
    if dtype == np.float64:  # the float32 tests only need the four above
      out.update(
          Az=A.mv(z), combination=A.mv(1.5 * x - 0.7 * z), ATTx=A.T.T.mv(x),
          linear_transpose=jax.linear_transpose(A.mv, x)(y)[0],
          dense=ops.materialise(A, dtype=dtype), denseT=ops.materialise(A.T, dtype=dtype),
          apply=ops.apply(A, X[:, None]), applyT=ops.apply(A.T, Y))
    return out

  return A, dict(x=x, y=y, z=z, X=X, Y=Y), jax.device_get(compute(A, x, y, z, X, Y))


@ALL
@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_is_kept(name, dtype):
  A, _, out = _common(name, dtype)
  assert all(value.dtype == dtype for value in out.values())
  assert out["Ax"].shape == (A.out_size,) and out["ATy"].shape == (A.in_size,)


@ALL
def test_linearity(name):
  _, _, out = _common(name, np.float64)
  np.testing.assert_allclose(out["combination"], 1.5 * out["Ax"] - 0.7 * out["Az"], rtol=1e-10,
                             atol=1e-10)


@ALL
@pytest.mark.parametrize("dtype", DTYPES)
def test_adjoint_identity(name, dtype):
  _, data, out = _common(name, dtype)
  x, y, Ax, ATy = (np.float64(a) for a in (data["x"], data["y"], out["Ax"], out["ATy"]))
  scale = np.linalg.norm(Ax) * np.linalg.norm(y) + np.linalg.norm(x) * np.linalg.norm(ATy)
  assert abs(Ax @ y - x @ ATy) <= ADJOINT_TOL[dtype] * scale


@ALL
def test_transpose_matches_linear_transpose(name):
  _, _, out = _common(name, np.float64)
  np.testing.assert_allclose(out["ATy"], out["linear_transpose"], rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(out["ATTx"], out["Ax"], rtol=1e-12, atol=1e-12)


@ALL
def test_materialised_transpose_is_transpose(name):
  A, _, out = _common(name, np.float64)
  assert out["dense"].shape == (A.out_size, A.in_size)
  np.testing.assert_allclose(out["denseT"], out["dense"].T, rtol=1e-12, atol=1e-12)


@ALL
def test_jit_and_vmap_equal_an_eager_loop(name):
  A, data, out = _common(name, np.float64)
  np.testing.assert_allclose(A.mv(data["x"]), out["Ax"], rtol=1e-12, atol=1e-12)
  loop = np.stack([A.mv(x) for x in data["X"]])
  np.testing.assert_allclose(out["apply"], loop[:, None], rtol=1e-12, atol=1e-12)
  loop = np.stack([A.T.mv(y) for y in data["Y"]])
  np.testing.assert_allclose(out["applyT"], loop, rtol=1e-12, atol=1e-12)


@ALL
@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_is_two_adjoint_forward(name, dtype):
  _, _, out = _common(name, dtype)
  tol = 10 * ADJOINT_TOL[dtype]
  np.testing.assert_allclose(out["grad"], 2 * out["ATAx"], rtol=tol, atol=tol)


def test_is_single_tells_one_operator_from_a_batch():
  keep = (np.random.default_rng(0).random((3, 16)) > 0.5).astype(np.float32)
  assert ops.is_single(ops.mask(keep[0]))
  assert ops.is_single(ops.downsample(2, (4, 4)))
  assert not ops.is_single(jax.vmap(ops.mask)(keep))
  assert not ops.is_single(jax.vmap(lambda k: ops.compose(ops.downsample(2, (4, 4)),
                                                          ops.mask(k)))(keep))


def test_mask_is_an_elementwise_product():
  x = np.random.default_rng(2).standard_normal(M)
  np.testing.assert_array_equal(ops.mask(MASK).mv(x), MASK * x)
  np.testing.assert_array_equal(ops.mask(MASK.astype(bool)).mv(x), MASK * x)


@pytest.mark.parametrize("boundary, scipy_boundary, ndimage_mode", BOUNDARIES)
@pytest.mark.parametrize("kernel", [KERNEL_3, KERNEL_45, KERNEL_9], ids=["3x3", "4x5", "9x9"])
def test_blur_direct_and_fft_match_scipy(boundary, scipy_boundary, ndimage_mode, kernel):
  images = np.random.default_rng(3).standard_normal((3,) + SHAPE)
  direct, fft = (ops.blur(kernel, SHAPE, boundary=boundary, method=method)
                 for method in ("direct", "fft"))
  both = fast_jit(lambda A, B, U: (ops.apply(A, U), ops.apply(B, U)))
  out_direct, out_fft = both(direct, fft, images.reshape(3, -1))
  np.testing.assert_allclose(out_fft, out_direct, rtol=1e-10, atol=1e-10)
  for image, out in zip(images, np.asarray(out_direct).reshape(images.shape)):
    expected = signal.convolve2d(image, kernel, mode="same", boundary=scipy_boundary)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)
    if all(side % 2 for side in kernel.shape):  # ndimage centres even kernels differently
      np.testing.assert_allclose(out, ndimage.convolve(image, kernel, mode=ndimage_mode),
                                 rtol=1e-10, atol=1e-10)


def test_blur_auto_picks_fft_for_large_kernels():
  assert ops.blur(KERNEL_3, SHAPE).method == "direct"
  assert ops.blur(KERNEL_9, SHAPE).method == "fft"


def test_downsample_is_a_block_mean():
  image = np.random.default_rng(4).standard_normal(SHAPE)
  out = ops.downsample(2, SHAPE).mv(image.reshape(-1))
  np.testing.assert_allclose(out, image.reshape(4, 2, 3, 2).mean(axis=(1, 3)).reshape(-1),
                             rtol=1e-12)
  spread = ops.downsample(2, SHAPE).T.mv(jnp.arange(12.0)).reshape(SHAPE)
  np.testing.assert_allclose(spread, np.kron(np.arange(12.0).reshape(4, 3), np.ones((2, 2))) / 4)


def _area_reference(n_in, n_out):
  """Area averaging by replication: each pixel copied L / n_in times (L = lcm), then the
  L samples averaged in blocks of L / n_out; an independent route to the weights."""
  L = np.lcm(n_in, n_out)
  return np.kron(np.eye(n_in), np.ones((1, L // n_in))).T.reshape(n_out, L // n_out, n_in).mean(1)


@pytest.mark.parametrize("in_shape, out_shape", [(SHAPE, (3, 4)), (SHAPE, (11, 9)),
                                                 ((28, 28), (8, 8))])
def test_resize_is_area_averaging(in_shape, out_shape):
  dense = np.asarray(ops.materialise(ops.resize(in_shape, out_shape), dtype=jnp.float64))
  expected = np.kron(_area_reference(in_shape[0], out_shape[0]),
                     _area_reference(in_shape[1], out_shape[1]))
  np.testing.assert_allclose(dense, expected, rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(dense.sum(1), 1, rtol=1e-12)     # constants stay constant
  assert np.all(dense >= 0)


def test_resize_by_an_integer_factor_is_average_pooling():
  x = np.random.default_rng(3).random(M)
  np.testing.assert_allclose(ops.resize(SHAPE, (4, 3)).mv(x), ops.downsample(2, SHAPE).mv(x),
                             rtol=1e-12)
  np.testing.assert_allclose(ops.resize(SHAPE, SHAPE).mv(x), x, rtol=1e-12)


def test_fourier_filter_matches_numpy_and_removes_its_band():
  image = np.random.default_rng(5).standard_normal(SHAPE)
  out = ops.fourier_filter(NOTCH, SHAPE).mv(image.reshape(-1)).reshape(SHAPE)
  np.testing.assert_allclose(out, np.fft.ifft2(np.fft.fft2(image) * NOTCH).real, atol=1e-12)
  rows, cols = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
  wave = np.cos(2 * np.pi * (2 * rows / SHAPE[0] + cols / SHAPE[1]) + 0.3)
  np.testing.assert_allclose(ops.fourier_filter(NOTCH, SHAPE).mv(wave.reshape(-1)), 0, atol=1e-12)
  np.testing.assert_allclose(ops.materialise(ops.fourier_filter(NOTCH, SHAPE)),
                             ops.materialise(ops.fourier_filter(NOTCH, SHAPE)).T, atol=1e-12)


def test_gaussian_sensing_is_its_matrix_and_keeps_norms():
  key = jax.random.key(5)
  A = ops.gaussian_sensing(key, 500, 30)
  dense = fast_jit(ops.materialise)(A)
  np.testing.assert_array_equal(dense, jax.random.normal(key, (500, 30)) / np.sqrt(500))
  np.testing.assert_allclose(jnp.linalg.norm(dense, axis=0), 1.0, atol=0.15)  # std 0.03


def test_subsample_is_indexing_and_its_adjoint_scatters():
  A = ops.subsample(INDICES, M)
  x, y = _signals(A, np.float64)
  np.testing.assert_array_equal(A.mv(x), x[INDICES])
  expected = np.zeros(M)
  np.add.at(expected, INDICES, y)
  np.testing.assert_array_equal(A.T.mv(y), expected)


def test_algebra_matches_dense_matrices():
  A, B, C = ops.blur(KERNEL_45, SHAPE, boundary="periodic"), ops.mask(MASK), ops.matrix(DENSE)
  dense = fast_jit(ops.materialise)
  a, b, c = (dense(op) for op in (A, B, C))
  close = lambda op, expected: np.testing.assert_allclose(dense(op), expected, atol=1e-12)
  close(A @ B, a @ b)
  close(ops.compose(C, A, B), c @ a @ b)
  close((C @ A @ B).T, (c @ a @ b).T)
  close(A + B, a + b)
  close(A - 0.5 * B, a - 0.5 * b)
  close(-A * 3.0, -3.0 * a)
  close(ops.compose(A), a)


def test_scalar_is_a_traced_leaf():
  A = ops.blur(KERNEL_3, SHAPE)
  x, y = _signals(A, np.float64)
  slope = jax.grad(lambda s: jnp.vdot(y, (s * A).mv(x)))(2.0)
  np.testing.assert_allclose(slope, jnp.vdot(y, A.mv(x)), rtol=1e-12)
  assert len(jax.tree_util.tree_leaves(2.0 * A)) == 2  # kernel and scalar


def test_apply_to_dictionary_equals_the_product():
  A = ops.compose(ops.downsample(2, SHAPE), ops.blur(KERNEL_3, SHAPE, boundary="reflect"))
  W = np.random.default_rng(6).random((M, 7))
  expected = fast_jit(ops.materialise)(A) @ W
  np.testing.assert_allclose(ops.apply_to_dictionary(A, W), expected, rtol=1e-12, atol=1e-12)
  jitted = fast_jit(ops.apply_to_dictionary)(A, W)
  np.testing.assert_allclose(jitted, expected, rtol=1e-12, atol=1e-12)
  AW = ops.compose(A, ops.matrix(W))  # A W formed implicitly
  np.testing.assert_allclose(fast_jit(ops.materialise)(AW), expected, rtol=1e-12, atol=1e-12)


def test_a_batch_of_masks_vmaps():
  rng = np.random.default_rng(7)
  Ms, U = (rng.random((4, M)) > 0.5).astype(np.float64), rng.standard_normal((4, M))
  masks = jax.vmap(ops.mask)(Ms)
  assert masks.weights.shape == (4, M) and masks.in_size == M
  np.testing.assert_array_equal(jax.vmap(lambda A, u: A.mv(u))(masks, U), Ms * U)
  np.testing.assert_array_equal(jax.jit(jax.vmap(lambda A, u: A.T.mv(u)))(masks, U), Ms * U)


def test_batches_of_kernels_and_index_sets_vmap_with_their_transposes():
  rng = np.random.default_rng(8)
  kernels, R = rng.standard_normal((3, 3, 3)), rng.standard_normal((3, M))
  blurs = jax.vmap(lambda k: ops.blur(k, SHAPE, boundary="reflect"))(kernels)
  out = fast_jit(jax.vmap(lambda A, r: A.T.mv(r)))(blurs, R)
  loop = [ops.blur(k, SHAPE, boundary="reflect").T.mv(r) for k, r in zip(kernels, R)]
  np.testing.assert_allclose(out, np.stack(loop), rtol=1e-12, atol=1e-12)
  index_sets = jnp.array([[0, 5, 9], [1, 2, 47], [40, 3, 3]])
  subs = jax.vmap(lambda i: ops.subsample(i, M))(index_sets)
  np.testing.assert_array_equal(jax.vmap(lambda A, u: A.mv(u))(subs, R),
                                np.take_along_axis(R, np.asarray(index_sets), axis=1))


def test_integer_signals_become_floating():
  out = ops.mask(MASK).mv(np.arange(M))
  assert jnp.issubdtype(out.dtype, jnp.floating)


@pytest.mark.parametrize("make, match", [
    (lambda: ops.mask(np.ones((2, 3))), r"M must have shape \(m,\)"),
    (lambda: ops.mask(np.array([1.0, np.nan])), "NaN or Inf"),
    (lambda: ops.matrix(np.ones(3)), r"M must have shape \(k, m\)"),
    (lambda: ops.blur(np.ones(3), SHAPE), r"kernel must have shape \(kh, kw\)"),
    (lambda: ops.blur(np.full((3, 3), np.inf), SHAPE), "kernel contains NaN or Inf"),
    (lambda: ops.blur(np.ones((0, 3)), SHAPE), "at least one entry"),
    (lambda: ops.blur(np.ones((3, 3)), SHAPE, boundary="mirror"), "boundary must be one of"),
    (lambda: ops.blur(np.ones((3, 3)), SHAPE, method="fast"), "method must be one of"),
    (lambda: ops.blur(np.ones((3, 3)), 48), r"image_shape must be a pair \(height, width\)"),
    (lambda: ops.downsample(3, SHAPE), r"divisible by factor 3; crop the images to \(6, 6\)"),
    (lambda: ops.downsample(0, SHAPE), "factor must be a positive integer"),
    (lambda: ops.downsample(1.5, SHAPE), "factor must be a positive integer"),
    (lambda: ops.gaussian_sensing(jax.random.key(0), 0, M), "k must be a positive integer"),
    (lambda: ops.subsample(np.array([0, M]), M), r"indices must lie in \[0, 48\)"),
    (lambda: ops.subsample(np.array([-1]), M), "Negative indices are not wrapped"),
    (lambda: ops.subsample(np.array([0.0]), M), "indices must be integers"),
    (lambda: ops.subsample(np.array([], np.int32), M), "indices is empty"),
    (lambda: ops.identity(0), "m must be a positive integer"),
    (lambda: ops.fourier_filter(np.ones((3, 3)), SHAPE), r"response must have the image shape"),
    (lambda: ops.fourier_filter(np.ones(SHAPE) * 1j, SHAPE), "operators are real"),
    (lambda: ops.compose(), "compose needs one or more LinearOperators"),
    (lambda: ops.resize(SHAPE, (0, 3)), "each side of image_shape must be a positive integer"),
    (lambda: ops.resize(48, (3, 3)), r"image_shape must be a pair"),
    (lambda: ops.mask(MASK) @ ops.matrix(DENSE), "B.out_size must equal A.in_size"),
    (lambda: ops.mask(MASK) + ops.matrix(DENSE), "both must map the same sizes"),
    (lambda: np.ones(M) * ops.mask(MASK), "multiplied by a scalar"),
    (lambda: jnp.ones(M) * ops.mask(MASK), "multiplied by a scalar"),
    (lambda: ops.apply(ops.mask(MASK), np.ones((3, 5))), r"rows of shape \(\.\.\., 48\)"),
    (lambda: ops.apply_to_dictionary(ops.mask(MASK), np.ones((5, M))), r"W of shape \(48, d\)"),
])
def test_bad_input_raises(make, match):
  with pytest.raises(ValueError, match=match):
    make()


@pytest.mark.parametrize("transform", [lambda f: f, jax.jit], ids=["eager", "jit"])
def test_wrong_signal_shape_raises_at_trace_time(transform):
  A = ops.blur(KERNEL_3, SHAPE)
  with pytest.raises(ValueError, match=r"expects a signal of shape \(48,\); got shape \(8, 6\)"):
    transform(lambda A, u: A.mv(u))(A, np.ones(SHAPE))
  with pytest.raises(ValueError, match=r"shape \(48,\)"):
    transform(lambda A, u: A.T.mv(u))(A, np.ones(M + 1))


SOLVE_TOL = {np.float32: 2e-4, np.float64: 1e-7}


@pytest.mark.parametrize("dtype", DTYPES)
def test_regularised_least_squares_closed_forms_cg_and_dense_solves_agree(dtype):
  """argmin ||A u - v||^2 + alpha ||u - z||^2: per pixel for a mask and the identity, by CG
  for a blur (64 steps) and average pooling (exact in two), each against numpy's solve."""
  from conejax.operators._solve import conjugate_gradient
  rng = np.random.default_rng(2)
  m, alpha, tol = 64, 0.3, SOLVE_TOL[dtype]
  v, z = rng.standard_normal(m).astype(dtype), rng.standard_normal(m).astype(dtype)
  weights = rng.random(m).astype(dtype)
  mask = ops.mask(weights)
  closed = ops.regularised_least_squares(mask, jnp.asarray(v), jnp.asarray(z), alpha)
  ref = (weights * v + alpha * z) / (weights**2 + alpha)
  assert closed.dtype == dtype
  np.testing.assert_allclose(closed, ref, rtol=tol)
  cg = conjugate_gradient(mask, jnp.asarray(weights * v + alpha * z), jnp.asarray(z), alpha, 64)
  np.testing.assert_allclose(cg, ref, rtol=50 * tol, atol=50 * tol)
  got = ops.regularised_least_squares(ops.identity(m), jnp.asarray(v), jnp.asarray(z), alpha)
  np.testing.assert_allclose(got, (v + alpha * z) / (1 + alpha), rtol=tol)
  # A 0/1 mask without pull: the observed pixels are v, the others z.
  binary = (weights > 0.5).astype(dtype)
  got = ops.regularised_least_squares(ops.mask(binary), jnp.asarray(v), jnp.asarray(z), 0.0)
  np.testing.assert_array_equal(got, np.where(binary > 0, v, z))
  blur = ops.blur(np.outer([1, 2, 1], [1, 2, 1]) / 16.0, (8, 8))
  B = np.asarray(ops.materialise(blur, dtype=jnp.float64))
  dense = np.linalg.solve(B.T @ B + alpha * np.eye(m), B.T @ v + alpha * z)
  got = ops.regularised_least_squares(blur, jnp.asarray(v), jnp.asarray(z), alpha, cg_iter=64)
  assert got.dtype == dtype
  np.testing.assert_allclose(got, dense, rtol=50 * tol, atol=50 * tol)
  down = ops.downsample(2, (8, 8))  # two eigenvalues: exact in two CG steps
  D = np.asarray(ops.materialise(down, dtype=jnp.float64))
  w = rng.standard_normal(16).astype(dtype)
  dense = np.linalg.solve(D.T @ D + alpha * np.eye(m), D.T @ w + alpha * z)
  got = ops.regularised_least_squares(down, jnp.asarray(w), jnp.asarray(z), alpha, cg_iter=2)
  np.testing.assert_allclose(got, dense, rtol=50 * tol, atol=50 * tol)


def test_per_pixel_gain_is_the_diagonal_or_none():
  np.testing.assert_array_equal(ops.per_pixel_gain(ops.mask(MASK), jnp.float64), MASK)
  np.testing.assert_array_equal(ops.per_pixel_gain(ops.identity(M)), np.ones(M))
  assert ops.per_pixel_gain(ops.downsample(2, SHAPE)) is None
  assert ops.per_pixel_gain(ops.matrix(np.eye(M))) is None  # a matrix is not inspected


def test_regularised_least_squares_names_its_wrong_arguments():
  A = ops.downsample(2, SHAPE)
  v, z = jnp.zeros(A.out_size), jnp.zeros(M)
  with pytest.raises(ValueError, match=r"v must have shape \(12,\)"):
    ops.regularised_least_squares(A, z, z, 0.1)
  with pytest.raises(ValueError, match="alpha must be a scalar"):
    ops.regularised_least_squares(A, v, z, jnp.ones(2))
  with pytest.raises(ValueError, match="A must be a conejax.operators operator"):
    ops.regularised_least_squares(np.eye(M), z, z, 0.1)
