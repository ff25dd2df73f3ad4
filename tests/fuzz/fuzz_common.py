"""Shared data, references and assertions of the fuzz suite (tests/fuzz/).

Every case states the right answer: either a conejax error (``raises_clearly``: the
exception type, a message matched by regex, and a raising frame inside conejax itself,
never deep inside JAX, numpy, zlib or json) or a result compared with a reference.
Sizes are tiny and fixed (N = 6 samples, m = 16 features, d = 4 atoms, K = 3 cones) so
that compiled programs are reused from case to case.
"""

from __future__ import annotations

import pathlib
import traceback

import numpy as np
import pytest

import conejax

N, M, D, K = 6, 16, 4, 3
CONEJAX_DIR = pathlib.Path(conejax.__file__).resolve().parent
SCALES = (1e-30, 1e-20, 1e-10, 1e-3, 1e3, 1e10, 1e20, 1e30)
RTOL32 = 1e-5  # float32 equivariance target of the issue


def rng(seed=0):
  return np.random.default_rng(seed)


def dictionaries(seed=0, k=K, m=M, d=D):
  """(k, m, d) non-negative unit-atom dictionaries, float32."""
  W = rng(seed).random((k, m, d)).astype(np.float32)
  return W / np.linalg.norm(W, axis=1, keepdims=True)


def samples(seed=1, n=N, m=M):
  """(n, m) non-negative samples, float32, none of them in a cone exactly."""
  return rng(seed).random((n, m)).astype(np.float32)


def cones(seed=0, mu_h=0.0, **kw):
  return conejax.make_cones(dictionaries(seed, **kw), mu_h)


def raised_by_conejax(error: BaseException) -> bool:
  """Whether the innermost frame that raised ``error`` lies inside the conejax package."""
  frames = traceback.extract_tb(error.__traceback__)
  return bool(frames) and pathlib.Path(frames[-1].filename).resolve().is_relative_to(CONEJAX_DIR)


def raises_clearly(exception, match, fn, *args, **kwargs):
  """Calls fn and asserts a conejax ``exception`` whose message matches ``match``."""
  with pytest.raises(exception, match=match) as info:
    fn(*args, **kwargs)
  assert raised_by_conejax(info.value), (
      f"{type(info.value).__name__} raised outside conejax: "
      f"{traceback.format_exception(info.value)[-3:]}")
  return info.value


def assert_close(actual, expected, rtol=RTOL32, scale=None):
  """max |actual - expected| <= rtol * max |expected| (or ``scale``); NaN-free both."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  assert np.all(np.isfinite(actual)), actual
  bound = rtol * (np.max(np.abs(expected)) if scale is None else scale)
  np.testing.assert_array_less(np.abs(actual - expected), bound + np.finfo(np.float64).tiny)
