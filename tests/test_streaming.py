"""Streaming NMF: one step against batch HALS, forgetting, convergence, drivers, validation.

Most problems are (n, 12) in chunks of 100 rows, so the jitted step compiles only a few times.
"""

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

import conejax
from conejax import _nmf_init, _streaming
from conejax._streaming import nmf_minibatch, nmf_minibatch_init, nmf_partial_fit

KEY = jax.random.key(0)


def _factorisable(seed, n=300, m=12, rank=3, dtype=np.float64):
  """U = H W^T exactly, with sparse non-negative factors."""
  rng = np.random.default_rng(seed)
  W = rng.random((m, rank)) * (rng.random((m, rank)) < 0.6)
  H = rng.random((n, rank)) * (rng.random((n, rank)) < 0.7)
  return (H @ W.T).astype(dtype)


def _in_chunks(U, size=100):
  return [U[i:i + size] for i in range(0, len(U), size)]


def _hals_reference(W, A, B, mu, sweeps):
  """Column-by-column HALS of min tr(W^T W B) - 2 tr(W^T A) + 2 mu |W|_1, plain numpy."""
  W = np.array(W, np.float64)
  for _ in range(sweeps):
    for k in range(W.shape[1]):
      if B[k, k] > 0:
        W[:, k] = np.maximum(W[:, k] + (A[:, k] - W @ B[:, k] - mu) / B[k, k], 0)
  return W


def _exact_codes(W, U, mu_h):
  """Codes by conejax's FISTA NNLS (the streaming step codes by HALS) to a tight tolerance."""
  return np.asarray(conejax.nnls(W, U, mu_h, solver="apg", tol=1e-13, max_iter=20000).h)


def test_one_chunk_without_forgetting_is_one_batch_hals_step():
  U = _factorisable(0) + 0.05
  state = nmf_minibatch_init(KEY, U, 3)
  W0 = np.asarray(state.W)
  new = nmf_partial_fit(state, U, mu_w=0.3, mu_h=0.2, forget=1.0, h_iter=400, w_iter=2)
  H = _exact_codes(W0, U, 0.2)
  A, B = U.T @ H, H.T @ H
  unit = float(new.scale) ** 2   # the statistics are kept at the stream's unit, max(U)
  assert float(new.scale) == np.max(U)
  np.testing.assert_allclose(new.A * unit, A, rtol=1e-8)
  np.testing.assert_allclose(new.B * unit, B, rtol=1e-8)
  np.testing.assert_allclose(new.W, _hals_reference(W0, A, B, 0.3, 2), rtol=1e-7, atol=1e-9)
  batch = conejax.nmf(U, 3, key=KEY, init=(W0, H), method="hals", max_iter=1, tol=0,
                      inner_iter=2, mu_w=0.3, mu_h=0.2)
  np.testing.assert_allclose(new.W, batch.W, rtol=1e-7, atol=1e-9)
  assert float(new.count) == len(U) and int(new.n_seen) == len(U) and int(new.n_chunks) == 1
  direct = conejax.nmf_objective(U, W0, H, 0.0, 0.2)
  np.testing.assert_allclose(new.chunk_objective, direct, rtol=1e-8)


def test_without_penalties_atoms_are_unit_and_the_statistics_rescaled():
  U = _factorisable(1)
  state = nmf_minibatch_init(KEY, U, 3)
  new = nmf_partial_fit(state, U, forget=1.0, h_iter=400, w_iter=3)
  H = _exact_codes(state.W, U, 0.0)
  W = _hals_reference(state.W, U.T @ H, H.T @ H, 0.0, 3)
  norm = np.linalg.norm(W, axis=0)
  np.testing.assert_allclose(new.W, W / norm, rtol=1e-7, atol=1e-9)
  # The statistics are those of the codes H S that go with the unit atoms W S^-1, at the
  # stream's unit scale.
  unit = float(new.scale) ** 2
  np.testing.assert_allclose(new.A * unit, U.T @ (H * norm), rtol=1e-7)
  np.testing.assert_allclose(new.B * unit, (H * norm).T @ (H * norm), rtol=1e-7)


def test_forgetting_discounts_the_old_statistics_and_scales_mu_w():
  first, second = _in_chunks(_factorisable(2, n=200) + 0.01)
  state = nmf_minibatch_init(KEY, first, 3)
  options = dict(forget=0.25, n_samples=1000, mu_w=0.5, mu_h=0.1, h_iter=400, w_iter=2)
  one = nmf_partial_fit(state, first, **options)
  two = nmf_partial_fit(one, second, **options)
  H1, H2 = _exact_codes(state.W, first, 0.1), _exact_codes(one.W, second, 0.1)
  A = 0.25 * first.T @ H1 + second.T @ H2
  B = 0.25 * H1.T @ H1 + H2.T @ H2
  unit = float(two.scale) ** 2   # the statistics are kept at the stream's unit
  np.testing.assert_allclose(two.A * unit, A, rtol=1e-7)
  np.testing.assert_allclose(two.B * unit, B, rtol=1e-7)
  np.testing.assert_allclose(two.count, 125.0, rtol=1e-12)
  # |W|_1 weighs against 1000 rows, the statistics hold 125: mu_w * 125 / 1000.
  np.testing.assert_allclose(two.W, _hals_reference(one.W, A, B, 0.0625, 2), rtol=1e-6,
                             atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exactly_factorisable_data_is_recovered(dtype):
  U = _factorisable(3, n=600, dtype=dtype)
  fit = nmf_minibatch(_in_chunks(U), 3, key=KEY, n_epochs=30, progress=False)
  assert fit.W.dtype == dtype and fit.objective.dtype == dtype
  history = np.asarray(fit.objective, np.float64)
  assert np.all(np.diff(history[5:]) <= 1e-3 * history[0])
  assert history[-1] < 1e-4 * history[0]
  H = conejax.nnls(fit.W, U).h
  error = np.linalg.norm(U - np.asarray(H @ fit.W.T, np.float64)) / np.linalg.norm(U)
  assert error < (1e-2 if dtype == np.float32 else 1e-3)


def test_within_two_percent_of_batch_nmf_on_digits():
  U = load_digits().data / 16.0
  batch = conejax.nmf(U, 16, key=KEY, method="hals", max_iter=200, tol=0)
  chunks = lambda: (U[i:i + 200] for i in range(0, len(U), 200))  # the last has 197 rows
  fit = nmf_minibatch(chunks, 16, key=KEY, n_epochs=20, progress=False)
  ours = conejax.nmf_objective(U, fit.W, conejax.nnls(fit.W, U).h)
  theirs = conejax.nmf_objective(U, batch.W, batch.H)
  assert 0.9 * theirs < ours < 1.02 * theirs


def test_driver_equals_a_loop_over_partial_fit_with_a_smaller_last_chunk():
  U = _factorisable(4, n=250) + 0.01
  chunks = _in_chunks(U)  # 100, 100 and 50 rows
  options = dict(mu_w=0.1, mu_h=0.05, forget=0.5, h_iter=20, w_iter=2)
  fit = nmf_minibatch(lambda: iter(chunks), 3, key=KEY, n_epochs=2, progress=False, **options)
  state = nmf_minibatch_init(KEY, chunks[0], 3)
  totals = []
  for n_samples in (None, 250):  # the first pass counts the rows it has seen
    total = 0.0
    for chunk in chunks:
      state = nmf_partial_fit(state, chunk, n_samples=n_samples, **options)
      total += float(state.chunk_objective)
    totals.append(total + 0.1 * float(np.sum(state.W)))
  np.testing.assert_allclose(fit.W, state.W, rtol=1e-12)
  np.testing.assert_allclose(fit.objective, totals, rtol=1e-12)
  assert int(fit.state.n_seen) == 500 and int(fit.state.n_chunks) == 6


def test_iterable_callable_and_one_shot_iterator_agree():
  chunks = _in_chunks(_factorisable(5, n=250) + 0.01)
  run = lambda c, n: nmf_minibatch(c, 3, key=KEY, n_epochs=n, progress=False).W
  np.testing.assert_array_equal(run(chunks, 3), run(lambda: iter(chunks), 3))
  np.testing.assert_array_equal(run(chunks, 1), run(iter(chunks), 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_jit_of_the_step_matches_and_does_not_recompile(dtype):
  first, second = _in_chunks(_factorisable(6, n=200, dtype=dtype) + dtype(0.01))
  state = nmf_minibatch_init(KEY, first, 3)
  eager = nmf_partial_fit(state, first, mu_h=0.1)
  jitted = jax.jit(lambda s, c: nmf_partial_fit(s, c, mu_h=0.1))(state, first)
  rtol = 1e-5 if dtype == np.float32 else 1e-12
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    np.testing.assert_allclose(a, b, rtol=rtol)
  assert eager.W.dtype == dtype and eager.A.dtype == dtype
  before = _streaming._partial_fit_jit._cache_size()
  nmf_partial_fit(eager, second, mu_h=0.3, mu_w=0.2, forget=0.9, n_samples=200, h_iter=7,
                  w_iter=1)
  assert _streaming._partial_fit_jit._cache_size() == before


def test_chunks_are_cast_to_the_state_dtype():
  U = _factorisable(7, n=100)
  state = nmf_minibatch_init(KEY, U.astype(np.float32), 3)
  assert nmf_partial_fit(state, U).W.dtype == np.float32


def test_the_init_is_the_batch_init_of_the_first_chunk():
  U = _factorisable(8, n=100) + 0.01
  state = nmf_minibatch_init(KEY, U, 3, init="random")
  # At unit scale, U / max(U), as conejax.nmf starts too.
  W, _ = jax.jit(_nmf_init.random_init, static_argnums=2)(KEY, U / U.max(), 3, np.ones(100))
  np.testing.assert_array_equal(state.W, W)
  assert not np.any(state.A) and not np.any(state.B) and float(state.count) == 0


GOOD = np.ones((20, 6))


@pytest.mark.parametrize("call, message", [
    (lambda s: nmf_partial_fit(s, -GOOD), "negative entries"),
    (lambda s: nmf_partial_fit(s, np.full((20, 6), np.nan)), "NaN or Inf"),
    (lambda s: nmf_partial_fit(s, np.ones((20, 5))), "chunk has 5 features but"),
    (lambda s: nmf_partial_fit(s, np.ones(6)), r"shape \(N, m\)"),
    (lambda s: nmf_partial_fit(s, GOOD.astype(np.uint8)), "floating-point"),
    (lambda s: nmf_partial_fit(s, GOOD[:0]), "chunk has no rows"),
    (lambda s: nmf_partial_fit(s, GOOD, mu_w=-1.0), "mu_w must be a finite number"),
    (lambda s: nmf_partial_fit(s, GOOD, mu_h=np.nan), "mu_h must be a finite number"),
    (lambda s: nmf_partial_fit(s, GOOD, forget=-0.1), r"forget must be in \[0, 1\]"),
    (lambda s: nmf_partial_fit(s, GOOD, forget=1.5), r"forget must be in \[0, 1\]"),
    (lambda s: nmf_partial_fit(s, GOOD, n_samples=0), "n_samples must be a positive"),
    (lambda s: nmf_partial_fit(s, GOOD, h_iter=0), "h_iter must be a positive"),
    (lambda s: nmf_partial_fit(s, GOOD, w_iter=1.5), "w_iter must be a positive"),
    (lambda s: nmf_minibatch_init(KEY, GOOD[:2], 3), "rank 3 exceeds min"),
    (lambda s: nmf_minibatch_init(KEY, GOOD, 0), "rank must be a positive integer"),
    (lambda s: nmf_minibatch_init(KEY, GOOD, 2, init="svd"), "init must be one of"),
    (lambda s: nmf_minibatch([GOOD], 2, key=KEY, n_epochs=0), "n_epochs must be"),
    (lambda s: nmf_minibatch(iter([GOOD]), 2, key=KEY, n_epochs=2), "one-shot iterator"),
    (lambda s: nmf_minibatch([], 2, key=KEY), "yielded no data in epoch 1"),
    (lambda s: nmf_minibatch([GOOD[:3], GOOD], 4, key=KEY), "first chunk of shape"),
    (lambda s: nmf_minibatch([GOOD, -GOOD], 2, key=KEY, init="random", progress=False),
     "negative entries"),
])
def test_bad_input_raises_a_clear_error(call, message):
  state = nmf_minibatch_init(KEY, GOOD, 2, init="random")
  with pytest.raises(ValueError, match=message):
    call(state)


def test_a_callable_returning_a_spent_iterator_is_reported():
  spent = iter([GOOD])
  with pytest.raises(ValueError, match="yielded no data in epoch 2"):
    nmf_minibatch(lambda: spent, 2, key=KEY, n_epochs=2, init="random", progress=False)


@pytest.mark.parametrize("c", [1e-30, 1e-20, 3.0, 1e20, 1e30])
def test_streaming_fit_is_equivariant_to_the_scale_of_the_data(c):
  """The first chunk sets the stream's unit (its max), so c U streams to the same atoms."""
  U = (_factorisable(9, n=200) + 0.01).astype(np.float32)
  chunks = lambda c: [U[i:i + 50] * np.float32(c) for i in range(0, 200, 50)]
  fit = lambda c, **kw: conejax.nmf_minibatch(chunks(c), 3, key=KEY, n_epochs=2,
                                              progress=False, **kw).W
  np.testing.assert_allclose(fit(c), fit(1.0), rtol=1e-5, atol=1e-5)
  if 1e-15 < c < 1e15:  # with penalties scaled to match: mu_h c, mu_w c^2
    np.testing.assert_allclose(fit(c, mu_h=0.05 * c, mu_w=0.01 * c * c),
                               fit(1.0, mu_h=0.05, mu_w=0.01), rtol=1e-5, atol=1e-5)


def test_overcomplete_dictionary_with_the_random_init():
  U = _factorisable(5) + 0.01
  fit = nmf_minibatch(_in_chunks(U), 16, key=KEY, init="random", n_epochs=3, progress=False)
  assert fit.W.shape == (12, 16) and np.all(np.isfinite(fit.W))
  assert float(fit.objective[-1]) < float(fit.objective[0])
  with pytest.raises(ValueError, match="use init='random'"):
    nmf_minibatch_init(KEY, U, 16)
