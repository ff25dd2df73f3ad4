"""Fuzz cases for inverse problems and the remaining public functions: reconstruct,
separate, operators, compress, random_shift, finetune, nnls, nnls_gram and nnls_l1.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import conejax
from conejax import operators as ops
from fuzz_common import (D, K, M, N, RTOL32, assert_close, cones, dictionaries, raises_clearly,
                         rng, samples)

CONES = cones()
W0 = dictionaries()[0]
X0 = samples()
MASK = (rng(7).random(M) > 0.3).astype(np.float32)
KEY = jax.random.key(0)


def _with(X, index, value):
  X = np.array(X, copy=True)
  X[index] = value
  return X


def _masks(n=N):
  return jax.vmap(ops.mask)(jnp.asarray(np.tile(MASK, (n, 1))))


# ---------------------------------------------------------------- reconstruct
BAD_RECONSTRUCT = {
    "loss": (dict(loss="l3"), "loss must be one of"),
    "select": (dict(select="all"), "select must be one of"),
    "A_matrix": (dict(A=np.eye(M)), "A must be a conejax.operators operator"),
    "A_size": (dict(A=ops.identity(M + 1)), "A maps signals of size 17"),
    "V_shape": (dict(V=samples(m=M + 1)), r"V must have shape \(N, 16\)"),
    "V_nan": (dict(V=_with(X0, 2, np.nan)), "V contains NaN or Inf"),
    "V_int": (dict(V=(X0 * 9).astype(np.int32)), "V has dtype int32"),
    "mu_negative": (dict(mu_h=-1.0), "mu_h must be a finite number >= 0"),
    "mu_nan": (dict(mu_h=float("nan")), "mu_h must be a finite number >= 0"),
    "single_operator_as_per_sample": (dict(A=ops.mask(MASK), per_sample_operator=True),
                                      "A is one operator"),
    "single_operator_n_equals_m": (dict(A=ops.mask(MASK), V=samples(n=M),
                                        per_sample_operator=True), "A is one operator"),
    "per_sample_wrong_n": (dict(A=_masks(N - 1), per_sample_operator=True),
                           "needs every array of A to have a leading"),
    "per_sample_admm": (dict(A=_masks(), per_sample_operator=True, solver="admm"),
                        "needs one operator shared by all samples"),
    "chunk_size": (dict(chunk_size=0), "chunk_size must be a positive integer"),
    "batch_size": (dict(batch_size=-1), "batch_size must be a positive integer"),
    "differentiation": (dict(differentiation="both"), "differentiation must be one of"),
    "solver": (dict(solver="fast"), "solver must be one of"),
}


@pytest.mark.parametrize("bad", BAD_RECONSTRUCT)
def test_reconstruct_bad_input(bad):
  options, match = BAD_RECONSTRUCT[bad]
  options = dict(options)
  V, A = options.pop("V", X0), options.pop("A", None)
  raises_clearly(ValueError, match, conejax.reconstruct, CONES, V, A, **options)


@functools.lru_cache(maxsize=None)
def _reconstructed(select="each"):
  return conejax.reconstruct(CONES, X0, select=select)


def test_denoising_reconstruction_is_the_projection():
  assert_close(_reconstructed().u, conejax.project(CONES, X0))


def test_reconstruct_single_sample_drops_its_axis():
  single = conejax.reconstruct(W0, X0[1])
  assert single.u.shape == (M,) and single.h.shape == (D,) and single.misfit.shape == ()


@pytest.mark.parametrize("c", [1e-20, 1e-5, 1e5, 1e20])
def test_reconstruct_data_scale_equivariance(c):
  out = conejax.reconstruct(CONES, X0 * np.float32(c))
  assert_close(np.asarray(out.u, np.float64) / c, _reconstructed().u)


@pytest.mark.parametrize("c", [1e-20, 1e20])
def test_inpainting_scale_equivariance(c):
  expected = conejax.reconstruct(CONES, X0 * MASK, ops.mask(MASK)).u
  out = conejax.reconstruct(CONES, X0 * MASK * np.float32(c), ops.mask(MASK))
  assert_close(np.asarray(out.u, np.float64) / c, expected)


_JIT_RECONSTRUCT = jax.jit(lambda V: conejax.reconstruct(CONES, V).u)


def test_reconstruct_under_jit_equals_eager():
  assert_close(_JIT_RECONSTRUCT(X0), _reconstructed().u)


def test_reconstruct_nan_row_under_jit_is_nan():
  out = np.asarray(_JIT_RECONSTRUCT(_with(X0, 2, np.nan)))
  assert np.all(np.isnan(out[2]))
  assert_close(out[[0, 1, 3, 4, 5]], np.asarray(_reconstructed().u)[[0, 1, 3, 4, 5]])


GRAD_ROUTES = {
    "l1": (dict(loss="l1"), TypeError, "reconstruct\\(loss='l1'\\) is not differentiable"),
    "per_sample_implicit": (dict(A=_masks(), per_sample_operator=True), ValueError,
                            "differentiation='unroll'"),
}


@pytest.mark.parametrize("route", GRAD_ROUTES)
def test_grad_through_a_route_that_cannot_differentiate_names_the_fix(route):
  options, exception, match = GRAD_ROUTES[route]
  options = dict(options)
  A = options.pop("A", None)
  loss = lambda V: conejax.reconstruct(W0, V, A, **options).u.sum()
  raises_clearly(exception, match, jax.grad(loss), jnp.asarray(X0))


@pytest.mark.parametrize("route", ["shared_implicit", "per_sample_unroll"])
def test_grad_through_differentiable_routes_is_finite(route):
  options = (dict(A=_masks(), per_sample_operator=True, differentiation="unroll", max_iter=30)
             if route == "per_sample_unroll" else {})
  A = options.pop("A", None)
  with pytest.warns(conejax.ConvergenceWarning) if route == "per_sample_unroll" else _nothing():
    grad = jax.grad(lambda V: conejax.reconstruct(W0, V, A, **options).u.sum())(jnp.asarray(X0))
  assert np.all(np.isfinite(np.asarray(grad)))


class _nothing:
  def __enter__(self):
    return self

  def __exit__(self, *args):
    return False


# ---------------------------------------------------------------- separate
BAD_SEPARATE = {
    "one_cone": (dict(cones=conejax.make_cones(W0)), "separate needs at least two cones"),
    "V_shape": (dict(V=samples(m=M - 1)), r"V must have shape \(N, 16\)"),
    "V_nan": (dict(V=_with(X0, 1, np.inf)), "V contains NaN or Inf"),
    "mu_negative": (dict(mu_h=-0.5), "mu_h must be a finite number >= 0"),
    "penalty": (dict(penalty="huge"), "penalty must be one of"),
}


@pytest.mark.parametrize("bad", BAD_SEPARATE)
def test_separate_bad_input(bad):
  options, match = BAD_SEPARATE[bad]
  options = dict(options)
  raises_clearly(ValueError, match, conejax.separate, options.pop("cones", CONES),
                 options.pop("V", X0), **options)


def test_wiener_components_add_up_to_the_mixture():
  np.testing.assert_allclose(np.asarray(conejax.separate(CONES, X0)).sum(1), X0, rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("c", [1e-20, 1e20])
def test_separate_scale_equivariance(c):
  expected = conejax.separate(CONES, X0)
  actual = conejax.separate(CONES, X0 * np.float32(c))
  assert_close(np.asarray(actual, np.float64) / c, expected)


# ---------------------------------------------------------------- operators
BAD_OPERATORS = {
    "mask_nan": (lambda: ops.mask(_with(MASK, 3, np.nan)), "M contains NaN or Inf"),
    "mask_2d": (lambda: ops.mask(MASK[None]), r"M must have shape \(m,\)"),
    "mask_complex": (lambda: ops.mask(MASK.astype(np.complex64)), "M has complex dtype"),
    "blur_empty": (lambda: ops.blur(np.ones((0, 3)), (4, 4)), "kernel must have at least one"),
    "blur_1d": (lambda: ops.blur(np.ones(3), (4, 4)), r"kernel must have shape \(kh, kw\)"),
    "blur_nan": (lambda: ops.blur(np.full((3, 3), np.nan), (4, 4)), "kernel contains NaN"),
    "blur_boundary": (lambda: ops.blur(np.ones((3, 3)), (4, 4), boundary="wrap"),
                      "boundary must be one of"),
    "blur_image_shape": (lambda: ops.blur(np.ones((3, 3)), (4,)), "image_shape must be a pair"),
    "downsample_zero": (lambda: ops.downsample(0, (4, 4)), "factor must be a positive integer"),
    "downsample_not_dividing": (lambda: ops.downsample(3, (4, 4)), "divisible by factor 3"),
    "sensing_k_zero": (lambda: ops.gaussian_sensing(KEY, 0, M), "k must be a positive integer"),
    "subsample_float": (lambda: ops.subsample(np.array([0.5, 1.0]), M), "indices must be integers"),
    "subsample_range": (lambda: ops.subsample(np.array([0, M]), M), r"indices must lie in \[0, 16\)"),
    "subsample_empty": (lambda: ops.subsample(np.zeros(0, int), M), "indices is empty"),
    "matrix_nan": (lambda: ops.matrix(np.full((3, M), np.nan)), "contains NaN or Inf"),
    "compose_sizes": (lambda: ops.identity(3) @ ops.identity(4), "Cannot compose A @ B"),
    "add_sizes": (lambda: ops.identity(3) + ops.identity(4), "Cannot add operators"),
    "mv_shape": (lambda: ops.mask(MASK).mv(np.ones(M + 1)), "mv expects a signal of shape"),
    "scale_by_array": (lambda: ops.identity(3) * np.ones(2), "multiplied by a scalar"),
    "apply_shape": (lambda: ops.apply(ops.identity(M), np.ones((2, M + 1))), "apply expects"),
}


@pytest.mark.parametrize("bad", BAD_OPERATORS)
def test_operators_bad_input(bad):
  make, match = BAD_OPERATORS[bad]
  raises_clearly(ValueError, match, make)


# ---------------------------------------------------------------- compress
BAD_COMPRESS = {
    "W_one_dim": ((W0[:, 0], X0, 2), r"W must have shape \(m, d\)"),
    "X_one_dim": ((W0, X0[0], 2), r"X must have shape \(N, m\)"),
    "X_wrong_m": ((W0, samples(m=M + 1), 2), r"X must have shape \(N, 16\)"),
    "W_empty": ((W0[:, :0], X0, 1), "W has an empty axis"),
    "W_nan": ((_with(W0, 0, np.nan), X0, 2), "W contains NaN or Inf"),
    "W_negative": ((-W0, X0, 2), "W has negative entries"),
    "X_nan": ((W0, _with(X0, 1, np.nan), 2), "X contains NaN or Inf"),
    "n_zero": ((W0, X0, 0), "n_nonzero must be a positive integer"),
    "n_too_big": ((W0, X0, D + 1), "n_nonzero 5 exceeds the 4 atoms"),
    "n_float": ((W0, X0, 1.5), "n_nonzero must be a positive integer"),
}


@pytest.mark.parametrize("bad", BAD_COMPRESS)
def test_compress_bad_input(bad):
  args, match = BAD_COMPRESS[bad]
  raises_clearly(ValueError, match, conejax.compress, *args)


@functools.lru_cache(maxsize=None)
def _compressed():
  return tuple(np.asarray(x) for x in conejax.compress(W0, X0, 2))


@pytest.mark.parametrize("c", [1e-30, 1e-20, 1e20, 1e30])
def test_compress_data_scale_equivariance(c):
  H, error = conejax.compress(W0, X0 * np.float32(c), 2)
  assert_close(np.asarray(H, np.float64) / c, _compressed()[0])
  assert_close(error, _compressed()[1])


@pytest.mark.parametrize("b", [1e-20, 1e20])
def test_compress_dictionary_scale_equivariance(b):
  H, error = conejax.compress(W0 * np.float32(b), X0, 2)
  assert_close(np.asarray(H, np.float64) * b, _compressed()[0])
  assert_close(error, _compressed()[1])


def test_compress_nan_row_under_jit():
  H, error = jax.jit(lambda X: conejax.compress(W0, X, 2))(_with(X0, 3, np.nan))
  assert np.all(np.isnan(np.asarray(H)[3])) and np.isnan(np.asarray(error)[3])
  assert_close(np.asarray(H)[[0, 1, 2, 4, 5]], _compressed()[0][[0, 1, 2, 4, 5]])


def test_compress_grad_names_the_fix():
  raises_clearly(TypeError, "compress is not differentiable",
                 jax.grad(lambda X: conejax.compress(W0, X, 2)[0].sum()), jnp.asarray(X0))


def test_compress_empty_batch():
  H, error = conejax.compress(W0, X0[:0], 2)
  assert H.shape == (0, D) and error.shape == (0,)


# ---------------------------------------------------------------- random_shift, finetune
@pytest.mark.parametrize("bad, match", [
    (dict(X=jnp.ones((2, 15))), r"X must be \(B, 16\)"),
    (dict(max_shift=-1), "max_shift must be a whole number"),
    (dict(max_shift=1.5), "max_shift must be a whole number"),
])
def test_random_shift_bad_input(bad, match):
  X = bad.pop("X", jnp.asarray(X0))
  raises_clearly(ValueError, match, conejax.random_shift, KEY, X, (4, 4), **bad)


def test_random_shift_by_zero_is_the_identity():
  np.testing.assert_array_equal(conejax.random_shift(KEY, jnp.asarray(X0), (4, 4), max_shift=0),
                                X0)


Y_TUNE = np.repeat([0, 1, 2], 4)
X_TUNE = samples(seed=5, n=12)


def _finetune(**kw):
  options = dict(steps=2, key=KEY, batch_size=4, eval_every=1, progress=False,
                 validation=0.25)
  options.update(kw)
  optimizer = options.pop("optimizer", optax.sgd(1e-2))
  return conejax.finetune(CONES, options.pop("X", X_TUNE), options.pop("y", Y_TUNE), optimizer,
                          **options)


BAD_FINETUNE = {
    "nan_learning_rate": (dict(optimizer=optax.sgd(float("nan"))), "finetune diverged"),
    "steps_zero": (dict(steps=0), "steps must be a positive integer"),
    "batch_too_big": (dict(batch_size=50), "batch_size 50 exceeds"),
    "temperature_zero": (dict(temperature=0.0), "temperature must be > 0"),
    "validation_big": (dict(validation=1.5), "validation must be a fraction"),
    "validation_triple": (dict(validation=(X_TUNE,)), "validation must be a fraction"),
    "unknown_labels": (dict(y=Y_TUNE + 5), "have no cone"),
    "nan_labels": (dict(y=_with(Y_TUNE.astype(float), 0, np.nan)), "y contains NaN"),
    "objective": (dict(objective="hinge"), "objective must be one of"),
    "augment_not_callable": (dict(augment=3), "augment must be a function"),
    "augment_shape": (dict(augment=lambda key, X: X[:, :-1]), "augment must return a batch"),
    "tau_negative": (dict(tau=-1.0), "tau must be a finite number >= 0"),
    "X_nan": (dict(X=_with(X_TUNE, 2, np.nan)), "X contains NaN or Inf"),
}


@pytest.mark.parametrize("bad", BAD_FINETUNE)
def test_finetune_bad_input(bad):
  options, match = BAD_FINETUNE[bad]
  raises_clearly(ValueError, match, _finetune, **options)


def test_finetune_under_jit_says_so():
  raises_clearly(TypeError, "finetune got traced", jax.jit(lambda X: _finetune(X=X).cones.W),
                 X_TUNE)


# ---------------------------------------------------------------- nnls engine
H0 = np.asarray(conejax.nnls(W0, X0).h)


@pytest.mark.parametrize("c", [1e-30, 1e-20, 1e20, 1e30])
def test_nnls_data_scale_equivariance(c):
  assert_close(np.asarray(conejax.nnls(W0, X0 * np.float32(c)).h, np.float64) / c, H0)


@pytest.mark.parametrize("b", [1e-20, 1e20])
def test_nnls_dictionary_scale_equivariance(b):
  assert_close(np.asarray(conejax.nnls(W0 * np.float32(b), X0).h, np.float64) * b, H0)


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16])
def test_nnls_half_precision_is_promoted(dtype):
  out = conejax.nnls(W0.astype(dtype), X0.astype(dtype))
  assert out.h.dtype == jnp.float32
  expected = conejax.nnls(W0.astype(dtype).astype(np.float32), X0.astype(dtype).astype(np.float32))
  assert_close(out.h, expected.h)


BAD_NNLS = {
    "W_nan": (lambda: conejax.nnls(_with(W0, 0, np.nan), X0), "W contains NaN"),
    "V_nan": (lambda: conejax.nnls(W0, _with(X0, 0, np.nan)), "V contains NaN"),
    "h0_nan": (lambda: conejax.nnls(W0, X0, h0=np.full((N, D), np.nan, np.float32)),
               "h0 contains NaN"),
    "h0_shape": (lambda: conejax.nnls(W0, X0, h0=np.zeros((N, D + 1), np.float32)),
                 "h0 must have the shape"),
    "mu_negative": (lambda: conejax.nnls(W0, X0, -1.0), "mu must be a finite number >= 0"),
    "V_wrong_m": (lambda: conejax.nnls(W0, samples(m=M + 1)), r"V must have shape \(\.\.\., m\)"),
    "gram_negative_definite": (lambda: conejax.nnls_gram(-np.eye(D, dtype=np.float32), X0 @ W0),
                               "G must be positive semi-definite"),
    "gram_not_square": (lambda: conejax.nnls_gram(np.ones((D, D - 1), np.float32), X0 @ W0),
                        r"G must be \(d, d\)"),
    "l1_nan": (lambda: conejax.nnls_l1(W0, _with(X0, 0, np.inf)), "V contains NaN"),
}


@pytest.mark.parametrize("bad", BAD_NNLS)
def test_nnls_bad_input(bad):
  make, match = BAD_NNLS[bad]
  raises_clearly(ValueError, match, make)


def test_nnls_without_atoms():
  raises_clearly(ValueError, "atom", conejax.nnls, np.ones((M, 0), np.float32), X0)


def test_nnls_l1_without_atoms():
  raises_clearly(ValueError, "atom", conejax.nnls_l1, np.ones((M, 0), np.float32), X0)


def test_nnls_nan_row_under_jit_is_nan():
  h = np.asarray(jax.jit(lambda V: conejax.nnls(W0, V).h)(_with(X0, 2, np.nan)))
  assert np.all(np.isnan(h[2]))
  assert_close(h[[0, 1, 3, 4, 5]], H0[[0, 1, 3, 4, 5]])
