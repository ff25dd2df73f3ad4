"""Fuzz cases for the cone functions: codes, project, distance, log_likelihood,
predict_proba, predict, score, features, anomaly_score and make_cones.

Bad input must raise a conejax error naming the argument; good input in any form (dtypes,
lists, memmaps, read-only and strided arrays, batches) must give the float32 reference;
results must be equivariant to the scale of the data and of W (1e-30..1e30); under jit a
NaN or Inf sample (or cone) must give NaN results for it, never a plausible number.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import conejax
from fuzz_common import (D, K, M, N, RTOL32, SCALES, assert_close, cones, dictionaries,
                         raises_clearly, samples)

CONES = cones()
X0 = samples()

# Each public function of the cones as f(cones, X), the scale of its result in the data's
# scale c (codes c, distances c, labels 1) and in W's scale b.
FUNCTIONS = {
    "codes": (conejax.codes, 1, -1),
    "project": (conejax.project, 1, 0),
    "distance": (conejax.distance, 1, 0),
    "log_likelihood": (conejax.log_likelihood, 2, 0),
    "predict_proba": (conejax.predict_proba, None, 0),
    "features": (conejax.features, 1, -1),
    "anomaly_score": (conejax.anomaly_score, 1, 0),
    "predict": (conejax.predict, 0, 0),
    "score": (lambda c, X, **o: conejax.score(c, X, _labels_for(X), **o), 0, 0),
}


def _labels_for(X):
  """Labels 0 in the batch shape of X (one per sample; (N,) when X is not an array)."""
  try:
    return np.zeros(np.shape(X)[:-1], int)
  except ValueError:
    return np.zeros(N, int)
ARRAY_FUNCTIONS = [name for name in FUNCTIONS if name not in ("predict", "score")]
# Each jitted function compiles its own solver (seconds each); these four cover the codes,
# the distances and both reductions over the cones. The others are checked under vmap,
# whose batched solver is compiled once and shared.
JIT_FUNCTIONS = ["codes", "distance", "predict_proba", "anomaly_score"]
JITTED = {name: jax.jit(FUNCTIONS[name][0]) for name in JIT_FUNCTIONS}
VMAPPED = {name: jax.vmap(FUNCTIONS[name][0], in_axes=(None, 0)) for name in ARRAY_FUNCTIONS}


@functools.lru_cache(maxsize=None)
def reference(name):
  return np.asarray(FUNCTIONS[name][0](CONES, X0))


def _with(X, i, value):
  X = X.copy()
  X[np.unravel_index(i, X.shape)] = value
  return X


def _nan_row(X, row=2):
  X = X.copy()
  X[row] = np.nan
  return X


# ---------------------------------------------------------------- bad data: named errors
BAD_X = {
    "nan_row": (lambda: _nan_row(X0), ValueError, "X contains NaN or Inf"),
    "inf_entry": (lambda: _with(X0, 7, np.inf), ValueError, "X contains NaN or Inf"),
    "minus_inf": (lambda: _with(X0, 40, -np.inf), ValueError, "X contains NaN or Inf"),
    "wrong_m": (lambda: samples(m=M + 1), ValueError, r"X must have shape \(\.\.\., m\) with m = 16"),
    "no_features": (lambda: np.zeros((N, 0), np.float32), ValueError, r"with m = 16"),
    "scalar": (lambda: np.float32(1.0), ValueError, r"X must have shape \(\.\.\., m\)"),
    "int": (lambda: (X0 * 10).astype(np.int32), ValueError, "X has dtype int32; conejax needs real"),
    "uint8": (lambda: (X0 * 255).astype(np.uint8), ValueError, "scale uint8 images by 1/255"),
    "bool": (lambda: X0 > 0.5, ValueError, "X has dtype bool"),
    "complex": (lambda: X0.astype(np.complex64), ValueError, "X has dtype complex64"),
    "strings": (lambda: np.full((N, M), "a"), ValueError, "X has dtype <U1"),
    "objects": (lambda: np.full((N, M), None), ValueError, "X has dtype object"),
    "ragged": (lambda: [[1.0] * M, [1.0] * 3], ValueError, "X could not be read as an array"),
}


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("bad", BAD_X)
def test_bad_data_raises_named_error(function, bad):
  make, exception, match = BAD_X[bad]
  raises_clearly(exception, match, FUNCTIONS[function][0], CONES, make())


STATIC_BAD = ("wrong_m", "no_features", "scalar", "int", "uint8", "bool", "complex")


@pytest.mark.parametrize("function", ARRAY_FUNCTIONS)
@pytest.mark.parametrize("bad", STATIC_BAD)
def test_bad_shapes_and_dtypes_raise_under_jit(function, bad):
  make, exception, match = BAD_X[bad]
  raises_clearly(exception, match, jax.jit(FUNCTIONS[function][0]), CONES, make())


BAD_OPTIONS = {
    "solver": (dict(solver="nope"), "solver"),
    "differentiation": (dict(differentiation="sideways"), "differentiation must be one of"),
    "penalty": (dict(penalty="huge"), "penalty must be one of"),
    "batch_size_zero": (dict(batch_size=0), "batch_size must be a positive integer"),
    "batch_size_negative": (dict(batch_size=-3), "batch_size must be a positive integer"),
    "batch_size_float": (dict(batch_size=2.5), "batch_size must be a positive integer"),
    "batch_size_bool": (dict(batch_size=True), "batch_size must be a positive integer"),
    "max_iter_zero": (dict(solver="apg", max_iter=0), "max_iter must be a positive integer"),
    "tol_negative": (dict(solver="apg", tol=-1.0), "tol must be a finite number >= 0"),
    "tol_nan": (dict(solver="apg", tol=float("nan")), "tol must be a finite number >= 0"),
}


@pytest.mark.parametrize("function", ["codes", "distance", "predict_proba", "anomaly_score",
                                      "predict"])
@pytest.mark.parametrize("bad", BAD_OPTIONS)
def test_bad_options_raise_named_error(function, bad):
  options, match = BAD_OPTIONS[bad]
  raises_clearly(ValueError, match, FUNCTIONS[function][0], CONES, X0, **options)


@pytest.mark.parametrize("function", ["log_likelihood", "predict_proba"])
@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf"), np.ones(2)])
def test_bad_temperature(function, temperature):
  raises_clearly(ValueError, "temperature must be", FUNCTIONS[function][0], CONES, X0,
                 temperature)


def test_score_needs_one_label_per_sample():
  raises_clearly(ValueError, "y has shape", conejax.score, CONES, X0, np.zeros(N + 1))


# ---------------------------------------------------------------- every input form
def _memmap(X, tmp_path):
  path = tmp_path / "x.dat"
  out = np.memmap(path, dtype=X.dtype, mode="w+", shape=X.shape)
  out[:] = X
  return np.memmap(path, dtype=X.dtype, mode="r", shape=X.shape)


def _read_only(X, _):
  X = X.copy()
  X.setflags(write=False)
  return X


# form -> (build X from X0, rebuild the reference from reference(...), rounding applied)
FORMS = {
    "float64": (lambda X, _: X.astype(np.float64), None),
    "float16": (lambda X, _: X.astype(np.float16), np.float16),
    "bfloat16": (lambda X, _: X.astype(jnp.bfloat16), jnp.bfloat16),
    "jax_float32": (lambda X, _: jnp.asarray(X), None),
    "list": (lambda X, _: X.tolist(), None),
    "tuple_of_rows": (lambda X, _: tuple(map(tuple, X.tolist())), None),
    "memmap": (_memmap, None),
    "read_only": (_read_only, None),
    "fortran_order": (lambda X, _: np.asfortranarray(X), None),
    "strided_view": (lambda X, _: np.concatenate([X, X], 1)[:, ::2].copy() * 0 + X, None),
    "transposed_view": (lambda X, _: np.ascontiguousarray(X.T).T, None),
}


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("form", FORMS)
def test_input_forms_give_the_reference(function, form, tmp_path):
  build, rounding = FORMS[form]
  X = build(X0, tmp_path)
  fn = FUNCTIONS[function][0]
  expected = (reference(function) if rounding is None
              else np.asarray(fn(CONES, X0.astype(rounding).astype(np.float32))))
  actual = fn(CONES, X)
  if function in ("predict", "score"):
    np.testing.assert_array_equal(actual, expected)
  else:
    assert np.asarray(actual).dtype == np.float32
    assert_close(actual, expected)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_batch_axes_and_single_samples(function):
  fn, expected = FUNCTIONS[function][0], reference(function)
  if function == "score":
    assert fn(CONES, X0.reshape(2, 3, M)) == expected
    return
  batched = np.asarray(fn(CONES, X0.reshape(2, 3, M)))
  np.testing.assert_allclose(batched.reshape(expected.shape), expected, rtol=RTOL32, atol=1e-6)
  single = np.asarray(fn(CONES, X0[3]))
  np.testing.assert_allclose(single, expected[3], rtol=RTOL32, atol=1e-6)


@pytest.mark.parametrize("function", ARRAY_FUNCTIONS + ["predict"])
def test_empty_batch(function):
  out = np.asarray(FUNCTIONS[function][0](CONES, np.zeros((0, M), np.float32)))
  assert out.shape[0] == 0 and out.shape == (0,) + reference(function).shape[1:]


@pytest.mark.parametrize("function", ["codes", "distance", "predict"])
def test_reversed_rows_give_reversed_results(function):
  fn = FUNCTIONS[function][0]
  np.testing.assert_allclose(np.asarray(fn(CONES, X0[::-1])), reference(function)[::-1],
                             rtol=RTOL32, atol=1e-6)


# ---------------------------------------------------------------- scale equivariance
EQUIVARIANT = ["codes", "project", "distance", "features", "anomaly_score", "predict"]


def _check_scaled(function, actual, factor):
  expected = reference(function)
  if function == "predict":
    np.testing.assert_array_equal(actual, expected)
  else:
    assert_close(np.asarray(actual, np.float64) / factor, expected)


@pytest.mark.parametrize("function", EQUIVARIANT)
@pytest.mark.parametrize("c", SCALES)
def test_data_scale_equivariance(function, c):
  fn, power, _ = FUNCTIONS[function]
  _check_scaled(function, fn(CONES, X0 * np.float32(c)), c**power)


@pytest.mark.parametrize("function", ["codes", "project", "distance", "predict"])
@pytest.mark.parametrize("b", SCALES)
def test_dictionary_scale_equivariance(function, b):
  fn, _, power = FUNCTIONS[function]
  scaled = conejax.make_cones(dictionaries() * np.float32(b))
  _check_scaled(function, fn(scaled, X0), b**power)


@pytest.mark.parametrize("c", SCALES)
def test_scale_equivariance_with_a_penalty(c):
  """h(c x; c mu) = c h(x; mu) on unit atoms."""
  expected = np.asarray(conejax.codes(cones(mu_h=0.05), X0))
  actual = conejax.codes(cones(mu_h=0.05 * c), X0 * np.float32(c))
  assert_close(np.asarray(actual, np.float64) / c, expected)


@pytest.mark.parametrize("function", ["codes", "distance"])
@pytest.mark.parametrize("c", SCALES)
def test_scale_equivariance_under_jit(function, c):
  fn, power, _ = FUNCTIONS[function]
  _check_scaled(function, JITTED[function](CONES, X0 * np.float32(c)), c**power)


@pytest.mark.parametrize("c", [1e-20, 1e-10, 1e10, 1e20])
def test_data_and_dictionary_scaled_together(c):
  scaled = conejax.make_cones(dictionaries() * np.float32(c))
  _check_scaled("distance", conejax.distance(scaled, X0 * np.float32(c)), c)


@pytest.mark.parametrize("c", [1e-15, 1e-5, 1e5, 1e15])
def test_log_likelihood_scales_with_the_square(c):
  _check_scaled("log_likelihood", conejax.log_likelihood(CONES, X0 * np.float32(c)), c**2)


@pytest.mark.parametrize("c", [1e-30, 1e30])
def test_predict_proba_at_extreme_scales_is_one_hot_on_the_nearest(c):
  """exp(-D^2) at 1e30 is one-hot: computed from D_k^2 - D_min^2, never NaN."""
  p = np.asarray(conejax.predict_proba(CONES, X0 * np.float32(c)))
  nearest = reference("predict")
  if c > 1:
    np.testing.assert_array_equal(p, np.eye(K)[nearest])
  else:
    np.testing.assert_allclose(p, np.full((N, K), 1 / K), rtol=1e-6)


@settings(max_examples=12, deadline=None)
@given(exponent=st.integers(-20, 20), mantissa=st.floats(1.0, 9.99))
def test_hypothesis_distance_equivariance(exponent, mantissa):
  c = mantissa * 10.0**exponent
  _check_scaled("distance", conejax.distance(CONES, X0 * np.float32(c)), c)


# ---------------------------------------------------------------- non-finite under jit
@pytest.mark.parametrize("function, transform",
                         [(f, "jit") for f in JIT_FUNCTIONS] + [(f, "vmap") for f in ARRAY_FUNCTIONS])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("row", [0, 2, N - 1])
def test_nonfinite_row_under_jit_and_vmap_gives_nan_for_that_row_only(function, transform,
                                                                      value, row):
  X = X0.copy()
  X[row, 5] = value
  out = np.asarray((JITTED if transform == "jit" else VMAPPED)[function](CONES, X))
  assert np.all(np.isnan(out[row]))
  keep = np.arange(N) != row
  np.testing.assert_allclose(out[keep], reference(function)[keep], rtol=RTOL32, atol=1e-6)


def _nan_cone(value=np.nan, cone=1):
  W = dictionaries()
  W[cone, 3, 2] = value
  return conejax.Cones(jnp.asarray(W), CONES.mu_h, CONES.classes)


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("function", ["codes", "distance"])
def test_nonfinite_cone_under_jit_gives_nan_for_that_cone_only(function, value):
  out = np.asarray(JITTED[function](_nan_cone(value), X0))
  assert np.all(np.isnan(out[:, 1]))
  np.testing.assert_allclose(out[:, [0, 2]], reference(function)[:, [0, 2]], rtol=RTOL32,
                             atol=1e-6)


@pytest.mark.parametrize("function", ["predict_proba", "anomaly_score"])
def test_nonfinite_cone_under_jit_poisons_the_comparison(function):
  assert np.all(np.isnan(np.asarray(JITTED[function](_nan_cone(), X0))))


@pytest.mark.parametrize("function", ["codes", "distance", "predict"])
def test_nonfinite_cone_outside_jit_raises(function):
  raises_clearly(ValueError, "cones.W contains NaN or Inf", FUNCTIONS[function][0],
                 _nan_cone(), X0)


@pytest.mark.parametrize("function", ["codes", "project", "distance", "log_likelihood"])
def test_concrete_nonfinite_cone_under_vmap_of_the_samples_raises(function):
  """Only X is traced: the concrete W is still checked."""
  raises_clearly(ValueError, "cones.W contains NaN or Inf", VMAPPED[function], _nan_cone(), X0)


@pytest.mark.parametrize("function", ["codes", "distance", "anomaly_score"])
def test_nonfinite_sample_under_vmap(function):
  out = np.asarray(VMAPPED[function](CONES, _nan_row(X0)))
  assert np.all(np.isnan(out[2]))
  np.testing.assert_allclose(out[[0, 1, 3, 4, 5]], reference(function)[[0, 1, 3, 4, 5]],
                             rtol=RTOL32, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(rows=st.sets(st.integers(0, N - 1), max_size=N), column=st.integers(0, M - 1))
def test_hypothesis_nan_rows_are_exactly_the_nan_results(rows, column):
  X = X0.copy()
  X[sorted(rows), column] = np.nan
  out = np.asarray(JITTED["distance"](CONES, X))
  np.testing.assert_array_equal(np.isnan(out).all(1), np.isin(np.arange(N), sorted(rows)))
  assert not np.isnan(out[~np.isin(np.arange(N), sorted(rows))]).any()


# ---------------------------------------------------------------- jit, grad, determinism
@pytest.mark.parametrize("function", ["predict", "score"])
def test_label_functions_under_jit_name_the_jittable_alternative(function):
  fn = jax.jit(lambda X: FUNCTIONS[function][0](CONES, X))
  raises_clearly(TypeError, r"jnp.argmin\(conejax.distance", fn, X0)


@pytest.mark.parametrize("inside", [False, True])
def test_distance_gradient_is_finite(inside):
  """In W and X, also at zero residual (samples inside cone 0)."""
  X = np.einsum("kmd,nd->nm", dictionaries()[:1], np.ones((N, D), np.float32)) if inside else X0
  loss = lambda W, X: conejax.distance(conejax.Cones(W, CONES.mu_h, CONES.classes), X).sum()
  for grad in jax.grad(loss, argnums=(0, 1))(CONES.W, jnp.asarray(X)):
    assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize("function", ["codes", "distance", "predict"])
def test_results_are_bitwise_deterministic(function):
  fn = FUNCTIONS[function][0]
  np.testing.assert_array_equal(np.asarray(fn(CONES, X0)), np.asarray(fn(CONES, X0)))


# ---------------------------------------------------------------- make_cones
BAD_W = {
    "nan": (lambda: _with(dictionaries(), 5, np.nan), ValueError, "W contains NaN or Inf"),
    "inf": (lambda: _with(dictionaries(), 5, np.inf), ValueError, "W contains NaN or Inf"),
    "negative": (lambda: _with(dictionaries(), 5, -0.5), ValueError, "W has negative entries"),
    "one_dim": (lambda: np.ones(M, np.float32), ValueError, r"W must have shape \(m, d\) or"),
    "four_dim": (lambda: np.ones((1, K, M, D), np.float32), ValueError, "W must have shape"),
    "int": (lambda: np.ones((K, M, D), np.int64), ValueError, "W has dtype int64"),
    "complex": (lambda: np.ones((K, M, D), np.complex64), ValueError, "W has dtype complex64"),
    "strings": (lambda: np.full((M, D), "w"), ValueError, "W has dtype <U1"),
    "no_class": (lambda: np.ones((0, M, D), np.float32), ValueError, "W has an empty axis"),
    "no_feature": (lambda: np.ones((K, 0, D), np.float32), ValueError, "W has an empty axis"),
    "no_atom": (lambda: np.ones((K, M, 0), np.float32), ValueError, "W has an empty axis"),
    "ragged": (lambda: [[1.0, 2.0], [1.0]], ValueError, "W could not be read as an array"),
}


@pytest.mark.parametrize("bad", BAD_W)
def test_make_cones_rejects_bad_dictionaries(bad):
  make, exception, match = BAD_W[bad]
  raises_clearly(exception, match, conejax.make_cones, make())


@pytest.mark.parametrize("mu_h", [-1.0, float("nan"), float("inf"), np.ones(2)])
def test_make_cones_rejects_bad_penalties(mu_h):
  raises_clearly(ValueError, "mu_h must be", conejax.make_cones, dictionaries(), mu_h)


BAD_CLASSES = {
    "duplicates": ([0, 0, 1], "classes has repeated labels"),
    "nan": ([0.0, np.nan, 1.0], "classes contains NaN or Inf labels"),
    "inf": ([0.0, np.inf, 1.0], "classes contains NaN or Inf labels"),
    "mixed": ([0, "a", 1], "classes mixes strings and numbers"),
    "none": ([None, 1, 2], "classes has dtype object"),
    "two_dim": ([[0, 1, 2]], "classes must be a 1-D array"),
    "too_few": ([0, 1], "2 class labels given for 3 dictionaries"),
    "too_many": ([0, 1, 2, 3], "4 class labels given for 3 dictionaries"),
}


@pytest.mark.parametrize("bad", BAD_CLASSES)
def test_make_cones_rejects_bad_classes(bad):
  classes, match = BAD_CLASSES[bad]
  raises_clearly(ValueError, match, conejax.make_cones, dictionaries(), 0.0, classes)


@pytest.mark.parametrize("classes", [["a", "b", "c"], [0.5, 1.5, 2.5], [3, 7, 42],
                                     np.array([9, 8, 7], np.int64), (True, False, 2)])
def test_any_distinct_labels_are_predicted_as_given(classes):
  labelled = conejax.make_cones(dictionaries(), 0.0, classes)
  assert all(type(c) in (str, int, float, bool) for c in labelled.classes)
  expected = np.asarray(list(labelled.classes))[reference("predict")]
  np.testing.assert_array_equal(conejax.predict(labelled, X0), expected)


def test_numpy_settings_become_plain_and_hashable():
  settings = dict(rank=np.int64(4), tol=np.float32(0.5), sizes=np.arange(2), name="x")
  made = conejax.make_cones(dictionaries(), 0.0, None, settings)
  assert dict(made.settings) == dict(rank=4, tol=0.5, sizes=(0, 1), name="x")
  hash(made.settings)
  assert math.isclose(dict(made.settings)["tol"], 0.5)
