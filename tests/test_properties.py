"""Property-based tests (hypothesis): shapes, scales and degenerate inputs never give NaN."""

import jax
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import conejax

KEY = jax.random.key(0)
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)


@st.composite
def nnls_problems(draw):
  m, d, n = draw(st.integers(1, 12)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
  rng = np.random.default_rng(draw(st.integers(0, 2**16)))
  scale = 10.0 ** draw(st.integers(-3, 3))
  W = rng.random((m, d)) * (rng.random((m, d)) > draw(st.sampled_from([0.0, 0.5])))
  return W, scale * rng.standard_normal((n, m)), draw(st.sampled_from([0.0, 0.1, 2.0]))


@SETTINGS
@given(nnls_problems())
def test_nnls_is_finite_feasible_and_scale_equivariant(problem):
  W, V, mu = problem
  result = conejax.nnls(W, V, mu * np.abs(V).max())
  h = np.asarray(result.h)
  assert np.all(np.isfinite(h)) and np.all(h >= 0)
  assert np.all(result.residual <= 1e-10) and np.all(result.converged)
  scaled = np.asarray(conejax.nnls(W, 3.0 * V, 3.0 * mu * np.abs(V).max()).h)
  np.testing.assert_allclose(scaled, 3.0 * h, rtol=1e-6, atol=1e-9 * np.abs(h).max() + 1e-300)


@st.composite
def nmf_problems(draw):
  n, m = draw(st.integers(1, 15)), draw(st.integers(1, 10))
  rank = draw(st.integers(1, min(n, m)))
  rng = np.random.default_rng(draw(st.integers(0, 2**16)))
  kind = draw(st.sampled_from(["random", "zero rows", "constant", "zeros", "sparse"]))
  U = rng.random((n, m)) * 10.0 ** draw(st.integers(-3, 3))
  if kind == "zero rows":
    U[rng.random(n) < 0.5] = 0
  elif kind == "constant":
    U = np.full((n, m), 0.7)
  elif kind == "zeros":
    U = np.zeros((n, m))
  elif kind == "sparse":
    U *= rng.random((n, m)) < 0.2
  return U, rank, draw(st.sampled_from(["mu", "hals", "anls"])), draw(
      st.sampled_from(["random", "nndsvda"]))


@SETTINGS
@given(nmf_problems())
def test_nmf_is_finite_and_non_increasing(problem):
  U, rank, method, init = problem
  fit = conejax.nmf(U, rank, key=KEY, method=method, init=init, max_iter=15, tol=0)
  for array in (fit.W, fit.H, fit.objective):
    assert np.all(np.isfinite(array))
  assert np.all(np.asarray(fit.W) >= 0) and np.all(np.asarray(fit.H) >= 0)
  history = np.asarray(fit.objective)
  assert np.all(np.diff(history) <= 1e-9 * np.sum(U**2) + 1e-300)
  np.testing.assert_allclose(history[-1], conejax.nmf_objective(U, fit.W, fit.H),
                             rtol=1e-6, atol=1e-9 * np.sum(U**2))
