"""Streaming NMF with fixed atoms, entry weights / missing values and beta-divergences.

Each W step is checked on one chunk holding all the data with forget = 0 (so the statistics
are that chunk's alone) against a numpy transcription of the update or batch ``conejax.nmf``;
the KL stream against batch KL NMF on MNIST digits.
"""

import jax
import numpy as np
import pytest
from scipy.optimize import nnls

import conejax
from conejax.data import load_mnist
from conejax._streaming import nmf_minibatch, nmf_minibatch_init, nmf_partial_fit

KEY = jax.random.key(0)
EPS = float(np.finfo(np.float32).eps)
KL, IS = "kullback-leibler", "itakura-saito"


def _data(seed, n=200, m=12, rank=3, dtype=np.float64):
  """Positive rows near a rank-``rank`` product (positive everywhere: IS needs U > 0)."""
  rng = np.random.default_rng(seed)
  U = rng.random((n, rank)) @ rng.random((rank, m)) + 0.05 * rng.random((n, m)) + 0.01
  return U.astype(dtype)


def _weights(seed, shape, dtype=np.float64):
  """Weights in [0, 1], about a fifth of them 0 (missing)."""
  rng = np.random.default_rng(seed)
  return (rng.random(shape) * (rng.random(shape) > 0.2)).astype(dtype)


def _stream(U, rank, chunks=(100,), first=None, **options):
  """A stream over U in chunks of the given sizes; ``first`` options go to the init (and
  its weights, sliced per chunk, to every step)."""
  first = dict(first or {})
  weights = first.get("weights")
  if weights is not None:
    first["weights"] = weights[:chunks[0]]
  state = nmf_minibatch_init(KEY, U[:chunks[0]], rank, **first)
  start = 0
  for size in chunks:
    rows = slice(start, start + size)
    w = None if weights is None else weights[rows]
    state = nmf_partial_fit(state, U[rows], weights=w, **options)
    start += size
  return state


@pytest.mark.parametrize("loss", ["frobenius", "weighted", KL, IS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fixed_atoms_stay_bitwise_fixed_and_only_the_learnt_ones_are_normalised(loss, dtype):
  U = _data(0, n=300, dtype=dtype)
  F = np.random.default_rng(1).random((12, 2)).astype(dtype)
  first = dict(fixed_atoms=F)
  if loss == "weighted":
    first["weights"] = _weights(2, U.shape, dtype)
  elif loss != "frobenius":
    first["beta_loss"] = loss
  init = _stream(U, 3, chunks=(100,), first=first, h_iter=1, w_iter=1)  # W after one chunk
  state = _stream(U, 3, chunks=(100, 100, 100), first=first, forget=0.5)
  assert state.kind.n_fixed == 2 and state.W.shape == (12, 5) and state.W.dtype == dtype
  np.testing.assert_array_equal(state.W[:, :2], F)
  learnt = np.asarray(state.W[:, 2:], np.float64)
  assert np.all(np.isfinite(learnt)) and not np.array_equal(learnt, init.W[:, 2:])
  np.testing.assert_allclose(np.linalg.norm(learnt, axis=0), 1, rtol=1e-5)


def _weighted_codes(W, U, M):
  """Exact weighted NNLS codes row by row (scipy): min_h sum_j M_ij (u_ij - W_j h)^2."""
  root = np.sqrt(M)
  return np.stack([nnls(root[i][:, None] * W, root[i] * U[i])[0] for i in range(len(U))])


def _row_hals(W, A, B_w, mu, sweeps):
  """Coordinate descent on each row j of W: 0.5 w^T B_w[j] w - A[j] . w + mu |w|, numpy."""
  W = np.array(W, np.float64)
  for _ in range(sweeps):
    for k in range(W.shape[1]):
      for j in range(W.shape[0]):
        if B_w[j, k, k] > 0:
          W[j, k] = max(W[j, k] + (A[j, k] - B_w[j, k] @ W[j] - mu) / B_w[j, k, k], 0)
  return W


def test_weighted_w_step_on_one_chunk_is_the_batch_weighted_hals_update():
  U, M = _data(3, n=120), _weights(4, (120, 12))
  state = nmf_minibatch_init(KEY, U, 3, weights=M)
  W0 = np.asarray(state.W)
  new = nmf_partial_fit(state, U, weights=M, mu_w=0.3, forget=0.0, h_iter=3000, w_iter=2)
  H = _weighted_codes(W0, U, M)
  A = (M * U).T @ H
  B_w = np.einsum("ij,ik,il->jkl", M, H, H)
  unit = float(new.scale) ** 2  # the statistics are kept at the stream's unit, max(U)
  np.testing.assert_allclose(new.A * unit, A, rtol=1e-8)
  np.testing.assert_allclose(new.B_w * unit, B_w, rtol=1e-8, atol=1e-12 * np.abs(B_w).max())
  np.testing.assert_allclose(new.W, _row_hals(W0, A, B_w, 0.3, 2), rtol=1e-8, atol=1e-10)
  batch = conejax.nmf(U, 3, key=KEY, init=(W0, H), method="hals", weights=M, max_iter=1,
                      tol=0, inner_iter=2, mu_w=0.3)
  np.testing.assert_allclose(new.W, batch.W, rtol=1e-8, atol=1e-10)
  np.testing.assert_allclose(new.chunk_objective,
                             0.5 * np.sum(M * (U - H @ W0.T) ** 2), rtol=1e-8)


def _mu_atoms_reference(U, W, H, mu_w, beta, sweeps):
  """scikit-learn's MU update of W (our atoms) for beta 1 or 0, in numpy, at unit scale;
  also the statistics the stream keeps from the last update, numerator * W^(2 - beta)
  (Lefevre et al.'s form) and denominator."""
  W = np.array(W, np.float64)
  for _ in range(sweeps):
    WH = np.maximum(H @ W.T, EPS)
    if beta == 1:
      numerator, denominator = (U / WH).T @ H, np.broadcast_to(H.sum(axis=0), W.shape)
    else:
      numerator, denominator = (U / WH**2).T @ H, (1 / WH).T @ H
    stats = numerator * W ** (2 - beta), denominator
    ratio = numerator / (denominator + mu_w)
    W = W * (ratio if beta == 1 else np.sqrt(ratio))
    W[W < np.finfo(np.float64).eps] = 0
  return W, stats


@pytest.mark.parametrize("beta_loss, beta", [(KL, 1), (IS, 0)])
def test_beta_w_step_on_one_chunk_is_the_multiplicative_update(beta_loss, beta):
  U = _data(5, n=150)
  state = nmf_minibatch_init(KEY, U, 3, beta_loss=beta_loss)
  W0 = np.asarray(state.W)
  new = nmf_partial_fit(state, U, mu_w=0.2, mu_h=0.1, forget=0.0, h_iter=50, w_iter=3)
  # The codes: nmf_codes's MU run as many times from the stream's start, which is
  # scikit-learn's sqrt(mean / d) taken at the stream's unit scale (so equivariant).
  s = float(new.scale)
  assert s == U.max()
  start = np.full((len(U), 3), s * np.sqrt(np.mean(U / s) / 3))
  H = np.asarray(conejax.nmf_codes(W0, U, mu_h=0.1, beta_loss=beta_loss, init=start,
                                   max_iter=50, tol=0).H)
  # At unit scale: U / s, H / s, penalties mu_w / s^beta (and mu_h / s^(beta - 1)).
  W, (numerator, denominator) = _mu_atoms_reference(U / s, W0, H / s, 0.2 / s**beta, beta, 3)
  np.testing.assert_allclose(new.W, W, rtol=1e-8, atol=1e-12)
  np.testing.assert_allclose(new.A, numerator, rtol=1e-8)
  C = np.asarray(new.C)
  np.testing.assert_allclose(np.broadcast_to(C, W.shape), denominator, rtol=1e-8)
  direct = conejax.nmf_objective(U, W0, H, 0.0, 0.1, beta_loss=beta_loss)
  np.testing.assert_allclose(new.chunk_objective, direct, rtol=1e-8)


def test_kl_stream_on_mnist_digits_decreases_and_ends_near_batch_kl_nmf():
  X = np.asarray(load_mnist()[0][::25][:400], np.float64)  # 400 digits, every digit class
  options = dict(beta_loss=KL, mu_w=0.0, mu_h=0.0)
  chunks = [X[i:i + 100] for i in range(0, len(X), 100)]
  fit = nmf_minibatch(chunks, 8, key=KEY, n_epochs=15, h_iter=100, w_iter=3, forget=0.5,
                      progress=False, **options)
  history = np.asarray(fit.objective)
  assert history[-1] < 0.9 * history[0] and np.all(np.diff(history[3:]) < 1e-3 * history[0])
  batch = conejax.nmf(X, 8, key=KEY, max_iter=300, tol=0, **options)
  score = lambda W: float(conejax.nmf_objective(
      X, W, conejax.nmf_codes(W, X, beta_loss=KL, max_iter=300, tol=0).H, beta_loss=KL))
  ours, theirs = score(fit.W), score(batch.W)
  assert 0.95 * theirs < ours < 1.07 * theirs  # 6.1% above when written (60 W updates)


@pytest.mark.parametrize("beta_loss", ["frobenius", KL])
def test_unit_weights_equal_the_unweighted_stream(beta_loss):
  U = _data(6, n=300)
  plain = _stream(U, 3, chunks=(100, 100, 100), first=dict(beta_loss=beta_loss), mu_h=0.05)
  ones = _stream(U, 3, chunks=(100, 100, 100),
                 first=dict(beta_loss=beta_loss, weights=np.ones_like(U)), mu_h=0.05)
  assert ones.kind.weighted and not plain.kind.weighted
  np.testing.assert_allclose(ones.W, plain.W, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(ones.chunk_objective, plain.chunk_objective, rtol=1e-9)


@pytest.mark.parametrize("beta_loss", ["frobenius", KL])
def test_missing_nan_equals_zero_weights_at_the_nans(beta_loss):
  U = _data(7, n=200)
  hidden = np.random.default_rng(8).random(U.shape) < 0.15
  with_nan, M = np.where(hidden, np.nan, U), (~hidden).astype(U.dtype)
  filled = np.where(hidden, 5.0, U)  # any value: weight 0 makes it invisible
  a = _stream(with_nan, 3, chunks=(100, 100), first=dict(beta_loss=beta_loss, missing="nan"),
              missing="nan", mu_h=0.05)
  b = _stream(filled, 3, chunks=(100, 100), first=dict(beta_loss=beta_loss, weights=M),
              mu_h=0.05)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)


FEATURES = {
    "fixed": dict(fixed_atoms=np.eye(12)[:, :2]),
    "weighted": dict(weights=_weights(9, (100, 12))),
    "kl": dict(beta_loss=KL),
    "is": dict(beta_loss=IS, weights=_weights(9, (100, 12))),
}


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_jit_of_the_step_equals_eager_and_negative_data_gives_nan(feature, dtype):
  first = {k: v.astype(dtype) if isinstance(v, np.ndarray) else v
           for k, v in FEATURES[feature].items()}
  U = _data(10, n=100, dtype=dtype)
  state = nmf_minibatch_init(KEY, U, 3, **first)
  options = dict(weights=first.get("weights"), missing=first.get("missing"), mu_h=0.1,
                 mu_w=0.05)
  step = lambda s, c: nmf_partial_fit(s, c, **options)
  eager, jitted = step(state, U), jax.jit(step)(state, U)
  rtol = 1e-4 if dtype == np.float32 else 1e-11
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * 1e-3)
  assert eager.W.dtype == dtype and eager.chunk_objective.dtype == dtype
  assert np.isfinite(float(eager.chunk_objective))
  negative = jax.jit(step)(state, np.where(np.isnan(U), np.nan, -U))
  assert np.isnan(float(negative.chunk_objective)) and np.isnan(negative.W).any()


def test_beta_streams_are_equivariant_to_the_scale_of_the_data():
  U = _data(11, n=200)
  fit = lambda c, mu_w: _stream(U * c, 3, chunks=(100, 100), first=dict(beta_loss=KL),
                                mu_w=mu_w, mu_h=0.05).W
  # KL at U = c U': mu_w scales as c, mu_h is unchanged (``_nmf.unit_scale``).
  for c in (1e-20, 1e20):
    np.testing.assert_allclose(fit(c, 0.1 * c), fit(1.0, 0.1), rtol=1e-9, atol=1e-12)


GOOD = _data(12, n=20, m=6)


@pytest.mark.parametrize("start, call, message", [
    ({}, lambda s: nmf_partial_fit(s, GOOD, weights=np.ones((20, 6))),
     "weights given for a chunk of a stream started without weights"),
    ({}, lambda s: nmf_partial_fit(s, GOOD, missing="nan"), "missing given for a chunk"),
    ({}, lambda s: nmf_partial_fit(s, GOOD, beta_loss=KL), "is not this stream's loss"),
    (dict(beta_loss=KL), lambda s: nmf_partial_fit(s, GOOD, beta_loss="frobenius"),
     "is not this stream's loss"),
    (dict(weights=np.ones((20, 6))), lambda s: nmf_partial_fit(s, GOOD, weights=np.ones(6)),
     "weights must have U's shape"),
    (dict(weights=np.ones((20, 6))), lambda s: nmf_partial_fit(s, GOOD, weights=2 * GOOD),
     r"weights must be finite and in \[0, 1\]"),
    (dict(beta_loss=IS), lambda s: nmf_partial_fit(s, GOOD * (GOOD > 0.3)), "infinite where U"),
    ({}, lambda s: nmf_minibatch_init(KEY, GOOD, 2, fixed_atoms=np.ones((5, 2))),
     "fixed_atoms must be"),
    ({}, lambda s: nmf_minibatch_init(KEY, GOOD, 2, beta_loss="poisson"), "beta_loss must be"),
    ({}, lambda s: nmf_minibatch_init(KEY, GOOD, 2, missing="zero"), "missing must be None"),
])
def test_bad_input_names_the_argument(start, call, message):
  state = nmf_minibatch_init(KEY, GOOD, 2, init="random", **start)
  with pytest.raises(ValueError, match=message):
    call(state)


def test_cone_nmf_partial_fit_streams_its_beta_loss():
  X = _data(13, n=300)
  model = conejax.ConeNMF(n_components=3, beta_loss=KL, random_state=0)
  for chunk in np.array_split(X, 3):
    model.partial_fit(chunk)
  key = jax.random.key(np.random.RandomState(0).randint(np.iinfo(np.int32).max))
  state = nmf_minibatch_init(key, X[:100], 3, beta_loss=KL)
  for chunk in np.array_split(X, 3):
    state = nmf_partial_fit(state, chunk, forget=0.5)
  assert model._stream.kind.beta == 1.0 and model.n_iter_ == 3
  np.testing.assert_allclose(model.components_, np.asarray(state.W).T, rtol=1e-12)
