"""Streaming (online, mini-batch) sparse NMF for data that does not fit in memory.

Minimises 0.5 ||U - H W^T||_F^2 + mu_w |W|_1 + mu_h |H|_1 over W >= 0 (m, d) and H >= 0 (N, d)
while seeing U (N, m), samples as rows, one chunk (N_c, m) at a time, as in Mairal et al.
(2010). Each chunk is coded on the current dictionary by HALS sweeps from zero (cyclic
coordinate descent on the sparse NNLS problem ``conejax.nnls(W, u, mu_h)``); the sufficient
statistics A = sum U_c^T H_c (m, d) and B = sum H_c^T H_c (d, d) absorb the chunk after old
chunks are discounted; then a few HALS sweeps on (A, B) update W.
Memory is O(N_c m + m d + d^2) whatever N is: neither U nor H is ever held whole.

Coding by HALS rather than by the FISTA of ``conejax.nnls``: on a 1000 x 784 MNIST chunk with
64 unit atoms, 30 sweeps reached the FISTA optimum to float32 precision in 0.02 s against
0.12 s for 50 FISTA iterations, and HALS does not slow down on badly scaled atoms.

Forgetting is per chunk, as Mairal et al. weigh their iterations: each chunk first multiplies
the old statistics by ``forget``, so they hold about 1 / (1 - forget) chunks. Codes computed
with an older W are stale, and short memories won. MNIST, 60000 x 784, rank 64, 60 chunks of
1000, 5 epochs, objective above 200 batch HALS iterations: forget 0.5 0.67%, 0.7 1.1%, 0 (the
last chunk alone) 2.0%; scikit-learn's ``MiniBatchNMF`` form, a factor per pass of N rows
(``forget_factor ** (N_c / N)`` per chunk), gave 11.8% for 0.3 and 3.7% for 0.01. On
scikit-learn's digits (9 chunks of 200, 20 epochs) forget 0.3, 0.5 and 0.7 gave +0.4%, -0.9%
and +0.3%.

The statistics hold ``count`` discounted rows while the objective weighs |W|_1 against the N
rows of the data, so the W step uses the penalty mu_w * count / N: with ``forget=1`` one chunk
holding all the data gives exactly one batch HALS update of W.

Fixed atoms, entry weights (missing values) and beta-divergences, as ``conejax.nmf`` takes
them, are chosen by ``nmf_minibatch_init`` and recorded in the state (``StreamKind``): the
weighted Frobenius W step is row-wise HALS on per-feature statistics (m, d, d), the
beta-divergence W step the online multiplicative updates of Lefevre et al. (2011); the
unweighted Frobenius step above is unchanged (docs/streaming.md has the maths).

References:
  A. Lefevre, F. Bach, C. Fevotte. Online algorithms for nonnegative matrix factorization
  with the Itakura-Saito divergence. WASPAA 2011.
  J. Mairal, F. Bach, J. Ponce, G. Sapiro. Online learning for matrix factorization and
  sparse coding. JMLR 11, 2010.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from tqdm import tqdm

from conejax import _checks, _nmf, _nmf_checks, _nmf_init, _nmf_steps

_INITS = tuple(_nmf_init.INITS)
_dot = _nmf_steps._dot


@functools.partial(jax.tree_util.register_dataclass, data_fields=[],
                   meta_fields=["beta", "n_fixed", "weighted"])
@dataclasses.dataclass(frozen=True)
class StreamKind:
  """What a stream fits, fixed by ``nmf_minibatch_init``: static (a pytree without leaves),
  so ``jit`` of ``nmf_partial_fit`` branches on it and compiles once per kind.

  Attributes:
    beta: the beta of the loss (2 Frobenius, 1 Kullback-Leibler, 0 Itakura-Saito).
    n_fixed: d0, the leading atoms of W kept fixed (``fixed_atoms``).
    weighted: whether chunks carry entry weights (``weights`` or ``missing="nan"``).
  """
  beta: float = 2.0
  n_fixed: int = 0
  weighted: bool = False


class StreamingNMFState(NamedTuple):
  """Everything streaming NMF keeps between chunks; O(m d + d^2) (a weighted Frobenius
  stream: O(m d^2)), independent of N.

  Attributes:
    W: (m, d) current dictionary, atoms as columns.
    A: (m, d) discounted sum of U_c^T H_c over the chunks seen.
    B: (d, d) discounted sum of H_c^T H_c.
    count: () discounted number of rows summed into A and B.
    n_seen: () int32 rows seen, passes over the same rows counted again.
    n_chunks: () int32 chunks seen.
    chunk_objective: () 0.5 ||U_c - H_c W^T||^2 + mu_h |H_c|_1 of the last chunk, with its codes
      and the W they were computed on (before that chunk's update of W).
    scale: () the stream's unit, max of the first chunk: every chunk is fitted as U_c /
      scale (penalties to match, as ``conejax.nmf`` fits U / max(U)), so the fit is the
      same for data of any scale; A, B and count are kept at that unit scale, and
      ``chunk_objective`` is reported at the data's scale.
    C: for beta != 2, the discounted sum of the MU denominators ((H_c W^T)^(beta-1))^T H_c
      (m, d) (A then holds the numerators ((H_c W^T)^(beta-2) U_c)^T H_c); (d,) for the
      unweighted KL loss, whose denominator is the column sums of H_c for every feature.
      None for the Frobenius loss.
    B_w: for a weighted Frobenius stream, (m, d, d): per feature j the discounted sum of
      sum_i M_ij h_i h_i^T (A then holds sum_i M_ij u_ij h_i per feature). Else None.
    kind: the ``StreamKind`` (loss, number of fixed atoms, weighted or not).
  """
  W: jax.Array
  A: jax.Array
  B: jax.Array
  count: jax.Array
  n_seen: jax.Array
  n_chunks: jax.Array
  chunk_objective: jax.Array
  scale: jax.Array
  C: jax.Array | None = None
  B_w: jax.Array | None = None
  kind: StreamKind = StreamKind()


class StreamingNMFResult(NamedTuple):
  """The outcome of ``nmf_minibatch``.

  Attributes:
    W: (m, d) dictionary. Codes of any rows U (n, m) are ``conejax.nnls(W, U, mu_h).h``.
    objective: (n_epochs,) sum over each pass of the chunk objectives (each chunk coded on
      the W of its time) plus mu_w |W|_1 at the end of the pass: an online estimate that
      costs no extra pass; the exact objective of the final W needs one pass with ``nnls``.
    state: the final ``StreamingNMFState``, to continue with ``nmf_partial_fit``.
  """
  W: jax.Array
  objective: jax.Array
  state: StreamingNMFState


def _sweeps(X, P, Q, mu, n):
  """``n`` HALS sweeps in a loop (``hals_update``'s own loop unrolls, which compiles slowly)."""
  return lax.fori_loop(0, n, lambda _, X: _nmf_steps.hals_update(X, P, Q, mu, 1), X)


def _frobenius_step(state, U, mu_w, mu_h, forget, h_iter, w_iter):
  """Codes by HALS on (U W, W^T W); W by HALS on (A, B), the fixed atoms on the data side."""
  W, d0 = state.W, state.kind.n_fixed
  G, C = _dot(W.T, W), _dot(U, W)
  H = _sweeps(jnp.zeros_like(C), C, G, mu_h, h_iter)
  A_c, B_c = _dot(U.T, H), _dot(H.T, H)
  A, B = forget * state.A + A_c, forget * state.B + B_c
  if d0:  # the learnt atoms' subproblem, as ``conejax.nmf``'s HALS solves it
    A_new = A[:, d0:] - _dot(W[:, :d0], B[:d0, d0:])
    W_new = jnp.concatenate([W[:, :d0], _sweeps(W[:, d0:], A_new, B[d0:, d0:], mu_w, w_iter)],
                            axis=1)
  else:
    W_new = _sweeps(W, A, B, mu_w, w_iter)
  objective = _nmf_steps.objective_from_stats(jnp.sum(U**2), W, H, A_c, B_c, 0, mu_h)
  return W_new, dict(A=A, B=B), objective


def _row_sweeps(W, A, B_w, mu, n, n_fixed):
  """``n`` HALS sweeps over the learnt columns of W (m, d) for the weighted statistics: row
  j of W minimises 0.5 w^T B_w[j] w - A[j] . w + mu |w|_1, rows independent. A coordinate
  whose B_w[j, k, k] is 0 (no weight on that feature where atom k codes) is kept."""
  diag = jnp.diagonal(B_w, axis1=1, axis2=2)
  safe, live = jnp.where(diag > 0, diag, 1), ~(diag <= 0)

  def coordinate(k, W):
    gradient = A[:, k] - jnp.sum(B_w[:, k, :] * W, axis=1) - mu
    wk = jnp.maximum(W[:, k] + gradient / safe[:, k], 0)
    return W.at[:, k].set(jnp.where(live[:, k], wk, W[:, k]))

  sweep = lambda _, W: lax.fori_loop(n_fixed, W.shape[1], coordinate, W)
  return lax.fori_loop(0, n, sweep, W)


def _weighted_step(state, U, weights, mu_w, mu_h, forget, h_iter, w_iter):
  """Codes by exact weighted HALS on the chunk's residual; W by row HALS on (A, B_w)."""
  W = state.W
  codes = lambda _, HE: _nmf_steps.weighted_hals_codes(HE[0], W, HE[1], weights, mu_h, 1)
  H, E = lax.fori_loop(0, h_iter, codes, (jnp.zeros((U.shape[0], W.shape[1]), U.dtype), U))
  n, d = H.shape
  outer = (H[:, :, None] * H[:, None, :]).reshape(n, d * d)
  A = forget * state.A + _dot((weights * U).T, H)
  B_w = forget * state.B_w + _dot(weights.T, outer).reshape(-1, d, d)
  B = forget * state.B + _dot(H.T, H)
  W_new = _row_sweeps(W, A, B_w, mu_w, w_iter, state.kind.n_fixed)
  objective = 0.5 * jnp.sum(weights * E**2) + mu_h * jnp.sum(H)
  return W_new, dict(A=A, B=B, B_w=B_w), objective


def _mu_atoms(W, old, stats, mu, beta, d0):
  """W from the sum of the chunks' surrogates (Lefevre, Bach and Fevotte, 2011):
  A = old A + numerator * W^(1/gamma), C = old C + denominator, W = (A / (C + mu))^gamma;
  with no old statistics, one batch MU update W (numerator / (denominator + mu))^gamma.
  Zero denominators and tiny entries are treated as ``mu_beta_atoms`` treats them."""
  gamma = _nmf_steps.mm_exponent(beta)
  A = old[0] + stats[0] * (W if gamma == 1 else W ** (1 / gamma))
  C = old[1] + stats[1]
  denominator = (jnp.where(C == 0, 1, C)[None] if C.ndim == 1 else C) + mu
  ratio = A / jnp.where(denominator == 0, _nmf_steps.EPSILON, denominator)
  new = _nmf_steps.zero_tiny_atoms(ratio if gamma == 1 else ratio**gamma, beta)
  return (jnp.where(jnp.arange(W.shape[1])[None] < d0, W, new) if d0 else new), A, C


def _beta_step(state, U, weights, mu_w, mu_h, forget, h_iter, w_iter):
  """Codes by MU from scikit-learn's constant start (``nmf_codes``); W by the online MU of
  Lefevre et al. on the discounted statistics (``_mu_atoms``).

  Each of the ``w_iter`` updates rebuilds the chunk's own terms at the current W (the old
  chunks' stay as stored), so with ``forget=0`` they are ``w_iter`` batch MU updates of W.
  """
  W, beta, d0 = state.W, state.kind.beta, state.kind.n_fixed
  d = W.shape[1]
  mean = jnp.mean(U) if weights is None else jnp.sum(weights * U) / jnp.sum(weights)
  H = jnp.full((U.shape[0], d), jnp.sqrt(mean / d), U.dtype)
  codes = lambda _, H: _nmf_steps.mu_beta_codes(U, W, H, _dot(H, W.T), mu_h, beta, weights)
  H = lax.fori_loop(0, h_iter, codes, H)
  objective = _nmf_steps.beta_divergence(U, _dot(H, W.T), beta, weights) + mu_h * jnp.sum(H)
  old = (forget * state.A, forget * state.C)
  update = lambda W: _mu_atoms(
      W, old, _nmf_steps.mu_atom_statistics(U, H, _dot(H, W.T), beta, weights), mu_w, beta, d0)
  W_new, A, C = lax.fori_loop(1, w_iter, lambda _, WAC: update(WAC[0]), update(W))
  return W_new, dict(A=A, B=forget * state.B + _dot(H.T, H), C=C), objective


@jax.jit
def _partial_fit_jit(state, U, weights, mu_w, mu_h, forget, n_samples, h_iter, w_iter):
  kind = state.kind
  rows = jnp.asarray(U.shape[0], U.dtype)
  n_samples = jnp.where(n_samples > 0, n_samples, state.n_seen + rows).astype(U.dtype)
  count = forget * state.count + rows
  mu = mu_w * count / n_samples
  if kind.beta != 2:
    W_new, stats, objective = _beta_step(state, U, weights, mu, mu_h, forget, h_iter, w_iter)
  elif kind.weighted:
    W_new, stats, objective = _weighted_step(state, U, weights, mu, mu_h, forget, h_iter,
                                             w_iter)
  else:
    W_new, stats, objective = _frobenius_step(state, U, mu, mu_h, forget, h_iter, w_iter)
  # Without penalties (W S, H S^-1) fits as well as (W, H): unit atoms, with the statistics
  # rescaled to stand for the codes H S (A S, S B S, S B_w[j] S, C S), change nothing but
  # keep W well conditioned. Fixed atoms keep S = 1.
  scale = _nmf_steps.atom_scale(W_new, mu_w, mu_h, kind.n_fixed)
  W_new = W_new / scale[None]
  stats["B"] = stats["B"] * scale[:, None] * scale[None]
  if kind.beta == 2:
    stats["A"] = stats["A"] * scale[None]
  else:  # A = sum numerator * W^(1/gamma) goes as S^(1 - 1/gamma), C as S
    stats["A"] = stats["A"] * scale[None] ** (1 - 1 / _nmf_steps.mm_exponent(kind.beta))
    stats["C"] = stats["C"] * (scale if stats["C"].ndim == 1 else scale[None])
  if "B_w" in stats:
    stats["B_w"] = stats["B_w"] * scale[None, :, None] * scale[None, None]
  if kind.beta == 2:
    objective = objective * state.scale * state.scale
  else:
    objective = objective * state.scale**kind.beta
  return state._replace(W=W_new, count=count, n_seen=state.n_seen + U.shape[0],
                        n_chunks=state.n_chunks + 1, chunk_objective=objective, **stats)


def _check_chunk(chunk, m, dtype, missing=None):
  chunk = _nmf_checks.check_data(chunk, "chunk", allow_nan=missing == "nan")
  if chunk.shape[0] == 0:
    raise ValueError("chunk has no rows; skip empty chunks.")
  if chunk.shape[1] != m:
    raise ValueError(f"chunk has {chunk.shape[1]} features but the dictionary has m = {m}; "
                     "every chunk must be (N_c, m) with the same m, samples as rows.")
  return chunk.astype(dtype)


@functools.partial(jax.jit, static_argnames=("rank", "init"))
def _init_jit(key, U, *, rank, init):
  return _nmf_init.INITS[init](key, U, rank, jnp.ones(U.shape[:1], U.dtype))[0]


def nmf_minibatch_init(key: jax.Array, chunk, rank: int, *, init: str = "nndsvda",
                       beta_loss="frobenius", weights=None, missing: str | None = None,
                       fixed_atoms=None) -> StreamingNMFState:
  """Builds the streaming state: W from one chunk, empty statistics, the stream's kind.

  The loss, the fixed atoms and whether chunks are weighted are fixed here, for the whole
  stream: the state records them (``state.kind``) and ``nmf_partial_fit`` follows it.

  Args:
    key: PRNG key for the init (random factors, randomised SVD or k-means++).
    chunk: (N_c, m) non-negative data, samples as rows; its dtype becomes the state's.
    rank: number of atoms d to learn (beside ``fixed_atoms``), at most min(N_c, m) for
      "nndsvda" and "kmeans"; any rank (above m: an overcomplete dictionary) for "random".
    init: "nndsvda", "random" or "kmeans", as in ``conejax.nmf``, applied to this chunk
      (missing entries filled by their feature's weighted mean).
    beta_loss: "frobenius" (2), "kullback-leibler" (1), "itakura-saito" (0) or a float
      beta, as in ``conejax.nmf``: the loss of every chunk of the stream.
    weights: (N_c, m) weights in [0, 1] of this chunk's entries: the stream is weighted
      (every chunk may then carry weights; pass ones to start one on complete data).
    missing: None, or "nan": NaN entries are missing (weight 0); also makes the stream
      weighted.
    fixed_atoms: (m, d0) non-negative atoms kept exactly as given (bitwise) through the
      whole stream: W is [fixed_atoms, learnt atoms] (m, d0 + rank).

  Returns:
    ``StreamingNMFState`` with W (m, d0 + rank) and statistics and counts at zero. The chunk
    is not absorbed: pass it to ``nmf_partial_fit`` as well.

  Raises:
    ValueError: on negative, non-finite or non-float data, a bad rank, init, beta_loss,
      weights or missing, zeros under beta <= 0, or fixed atoms not (m, d0).
  """
  U = _nmf_checks.check_data(chunk, "chunk", allow_nan=missing == "nan")
  U, beta, weights = _nmf_checks.check_loss(U, beta_loss, weights, missing)
  rank = _checks.check_positive_int(rank, "rank")
  init = _checks.check_choice(init, "init", _INITS)
  n, m = U.shape
  if init != "random" and rank > min(n, m):
    raise ValueError(f"rank {rank} exceeds min(N_c, m) = {min(n, m)} for the first chunk of "
                     f"shape {(n, m)} with init={init!r}; start with at least {rank} rows, lower "
                     "the rank, or use init='random' (any rank: an overcomplete dictionary).")
  fixed = _nmf_checks.check_fixed(fixed_atoms, m, U.dtype)
  scale, U, _, _, _ = _nmf.unit_scale(U, 0.0, 0.0, beta=beta, weights=weights)
  W = _init_jit(key, _nmf_init.fill_missing(U, weights, jnp.ones(n, U.dtype)), rank=rank,
                init=init)
  if fixed is not None:
    W = jnp.concatenate([fixed, W], axis=1)
  d = W.shape[1]
  kind = StreamKind(beta, 0 if fixed is None else fixed.shape[1], weights is not None)
  zero = jnp.zeros((), U.dtype)
  count = jnp.zeros((), jnp.int32)
  C = None if beta == 2 else jnp.zeros(d if beta == 1 and not kind.weighted else (m, d), U.dtype)
  B_w = jnp.zeros((m, d, d), U.dtype) if beta == 2 and kind.weighted else None
  return StreamingNMFState(W, jnp.zeros_like(W), jnp.zeros((d, d), U.dtype), zero, count,
                           count, zero, scale.astype(U.dtype), C, B_w, kind)


def _check_options(mu_w, mu_h, forget, n_samples, h_iter, w_iter, dtype):
  mu_w = _checks.check_penalty(mu_w, "mu_w").astype(dtype)
  mu_h = _checks.check_penalty(mu_h, "mu_h").astype(dtype)
  if _checks._is_concrete(forget) and not 0 <= float(forget) <= 1:
    raise ValueError(f"forget must be in [0, 1] (0 keeps only the last chunk, 1 every chunk at "
                     f"full weight); got {forget}.")
  if n_samples is not None:
    n_samples = _checks.check_positive_int(n_samples, "n_samples")
  h_iter = _checks.check_positive_int(h_iter, "h_iter")
  w_iter = _checks.check_positive_int(w_iter, "w_iter")
  return mu_w, mu_h, jnp.asarray(forget, dtype), n_samples or 0, h_iter, w_iter


def nmf_partial_fit(state: StreamingNMFState, chunk, *, mu_w=0.0, mu_h=0.0, forget=0.5,
                    n_samples: int | None = None, h_iter: int = 30, w_iter: int = 3,
                    weights=None, missing: str | None = None,
                    beta_loss=None) -> StreamingNMFState:
  """One online step: code a chunk, absorb it into the statistics, update W.

  Frobenius loss: with W the current dictionary, H_c ~ argmin_{H >= 0} ||U_c - H W^T||^2 +
  mu_h |H|_1 by ``h_iter`` HALS sweeps from zero; then A <- f A + U_c^T H_c, B <- f B +
  H_c^T H_c and count <- f count + N_c with f = ``forget``; then ``w_iter`` HALS sweeps,
  from W, on min_{W >= 0} tr(W^T W B) - 2 tr(W^T A) + mu_w (count / n_samples) |W|_1. Without
  penalties the atoms are then scaled to unit norm (the statistics follow), which leaves the
  fit as it is and keeps W well conditioned.

  The stream's kind (``nmf_minibatch_init``) changes the two steps (docs/streaming.md): with
  weights M the codes are exact weighted HALS sweeps and W takes row-wise HALS sweeps on the
  per-feature statistics A_j = sum_i M_ij u_ij h_i, B_w[j] = sum_i M_ij h_i h_i^T; for
  beta != 2 the codes are ``h_iter`` multiplicative updates (as ``conejax.nmf_codes``) and
  W takes ``w_iter`` multiplicative updates W * (A / (C + mu_w'))^gamma on the discounted
  numerator and denominator statistics. Fixed atoms code the chunk but are never updated
  or rescaled.

  Args:
    state: from ``nmf_minibatch_init`` or a previous ``nmf_partial_fit``.
    chunk: (N_c, m) non-negative rows, cast to the dtype of ``state.W``.
    mu_w, mu_h: L1 weights >= 0 on the dictionary and on the codes, as in ``conejax.nmf``.
    forget: in [0, 1], the weight left to the old statistics by each chunk: they hold
      about 1 / (1 - forget) chunks. 0 keeps only this chunk, 1 every chunk.
    n_samples: rows in the whole data set, N, against which mu_w is weighed. None takes
      the rows seen so far, this chunk included: right during the first pass; pass N on
      later passes.
    h_iter: sweeps (HALS) or updates (MU) of the chunk's codes (30 HALS sweeps reach
      float32 precision on MNIST with 64 atoms; MU needs more).
    w_iter: sweeps (HALS) or updates (MU) of W.
    weights: (N_c, m) weights in [0, 1] of the chunk's entries (0 = missing), for a
      weighted stream only; None there is all ones.
    missing: None, or "nan": NaN entries are missing (weight 0); a weighted stream only.
    beta_loss: None (the stream's loss), or the loss, which must be the stream's.

  Returns:
    The new ``StreamingNMFState``. Compiled once per chunk shape, dtype and stream kind;
    every option is traced.

  Raises:
    ValueError: on negative, non-finite or non-float data, a chunk whose m differs from the
      state's, an empty chunk, mu < 0, forget outside [0, 1], bad counts, weights or
      missing in a stream started without them, bad weights, or a beta_loss that is not
      the stream's.

  Example:
    >>> import jax, numpy as np, conejax
    >>> U = np.random.default_rng(0).random((300, 20), dtype=np.float32)
    >>> state = conejax.nmf_minibatch_init(jax.random.key(0), U[:100], 5)
    >>> for chunk in (U[:100], U[100:200], U[200:]):
    ...   state = conejax.nmf_partial_fit(state, chunk)
    >>> state.W.shape, int(state.n_seen)
    ((20, 5), 300)
  """
  dtype, kind = state.W.dtype, state.kind
  if beta_loss is not None and _nmf_checks.beta_float(beta_loss) != kind.beta:
    raise ValueError(f"beta_loss={beta_loss!r} is not this stream's loss (beta = {kind.beta:g}, "
                     "set by nmf_minibatch_init); leave beta_loss=None, or start a new stream.")
  if not kind.weighted and (weights is not None or missing is not None):
    raise ValueError(f"{'weights' if weights is not None else 'missing'} given for a chunk of "
                     "a stream started without weights; pass weights (ones if the first chunk "
                     "is complete) or missing='nan' to nmf_minibatch_init.")
  U = _check_chunk(chunk, state.W.shape[0], dtype, missing)
  if kind != StreamKind() or missing is not None:
    U, _, weights = _nmf_checks.check_loss(U, kind.beta, weights, missing)
  if kind.weighted and weights is None:
    weights = jnp.ones_like(U)
  mu_w, mu_h, forget, n_samples, h_iter, w_iter = _check_options(
      mu_w, mu_h, forget, n_samples, h_iter, w_iter, dtype)
  # At the stream's unit scale (eager divisions: no reassociation into an underflow), with
  # the penalties of ``_nmf.unit_scale``: mu_w / s^beta, mu_h / s^(beta - 1).
  s = state.scale
  if kind.beta == 2:
    U, mu_w, mu_h = U / s, mu_w / s / s, mu_h / s
  else:
    U, mu_w, mu_h = U / s, mu_w / s**kind.beta, mu_h / s ** (kind.beta - 1)
  return _partial_fit_jit(state, U, weights, mu_w, mu_h, forget, jnp.asarray(n_samples, dtype),
                          h_iter, w_iter)


def _passes(chunks, n_epochs):
  """One fresh iterator of chunks per epoch, from a callable, a re-iterable or an iterator."""
  if callable(chunks):
    return (iter(chunks()) for _ in range(n_epochs))
  if iter(chunks) is chunks and n_epochs > 1:
    raise ValueError(f"chunks is a one-shot iterator, so it cannot be read for n_epochs = "
                     f"{n_epochs}; pass a function returning a fresh iterator per epoch (e.g. "
                     "lambda: (X[i:i + 1000] for i in range(0, len(X), 1000))) or n_epochs=1.")
  return (iter(chunks) for _ in range(n_epochs))


def nmf_minibatch(chunks: Iterable | Callable[[], Iterable], rank: int, *, key: jax.Array,
                  n_epochs: int = 10, mu_w=0.0, mu_h=0.0, forget=0.5, init: str = "nndsvda",
                  n_samples: int | None = None, h_iter: int = 30, w_iter: int = 3,
                  beta_loss="frobenius", missing: str | None = None, fixed_atoms=None,
                  progress: bool = True) -> StreamingNMFResult:
  """Streaming sparse NMF over chunks of rows: min 0.5||U - H W^T||^2 + mu_w|W|_1 + mu_h|H|_1.

  Reads each chunk, codes it, updates W (see ``nmf_partial_fit``) and drops it: peak memory is
  set by the chunk size, not by N. Chunks are never concatenated.

  Args:
    chunks: (N_c, m) non-negative float arrays (e.g. slices of an ``np.memmap``), as a
      function returning a fresh iterator per epoch, or a re-iterable such as a list; a
      one-shot iterator (a generator) only for ``n_epochs=1``. Sizes may differ (each new
      size compiles the step once).
    rank: number of atoms d, as in ``nmf_minibatch_init`` (any rank with init="random").
    key: PRNG key of the init, which sees only the first chunk.
    n_epochs: passes over the data.
    n_samples: rows per pass; None counts them during the first pass.
    beta_loss, missing, fixed_atoms: the stream's loss, missing entries (NaN with "nan")
      and fixed atoms, as in ``nmf_minibatch_init`` (entry weights other than missing
      entries need your own loop over ``nmf_partial_fit``).
    progress: show a tqdm bar over chunks.
    Other arguments: as in ``nmf_minibatch_init`` and ``nmf_partial_fit``.

  Returns:
    ``StreamingNMFResult`` with ``W`` (m, d), ``objective`` (n_epochs,) and ``state``.

  Raises:
    ValueError: as ``nmf_partial_fit`` and ``nmf_minibatch_init``, plus an empty epoch, a
      one-shot iterator with n_epochs > 1, or n_epochs < 1.

  Example:
    >>> import jax, numpy as np, conejax
    >>> X = np.random.default_rng(0).random((1000, 20), dtype=np.float32)
    >>> batches = lambda: (X[i:i + 256] for i in range(0, len(X), 256))
    >>> fit = conejax.nmf_minibatch(batches, 5, key=jax.random.key(0), n_epochs=3,
    ...                             progress=False)
    >>> fit.W.shape, fit.objective.shape
    ((20, 5), (3,))
  """
  n_epochs = _checks.check_positive_int(n_epochs, "n_epochs")
  options = dict(mu_w=mu_w, mu_h=mu_h, forget=forget, h_iter=h_iter, w_iter=w_iter)
  state, history = None, []
  with tqdm(desc="nmf_minibatch", unit="chunk", disable=not progress) as bar:
    for epoch, iterator in enumerate(_passes(chunks, n_epochs)):
      first = next(iterator, None)
      if first is None:
        raise ValueError(f"chunks yielded no data in epoch {epoch + 1}; a callable must return "
                         "a fresh, non-empty iterator on every call.")
      if state is None:
        state = nmf_minibatch_init(key, first, rank, init=init, beta_loss=beta_loss,
                                   missing=missing, fixed_atoms=fixed_atoms)
      total, rows = jnp.zeros((), state.W.dtype), 0
      for chunk in itertools.chain([first], iterator):
        state = nmf_partial_fit(state, chunk, n_samples=n_samples, missing=missing, **options)
        total, rows = total + state.chunk_objective, rows + len(chunk)
        bar.update()
      n_samples = n_samples or rows
      bar.total = bar.total or n_epochs * bar.n  # known once the first pass is over
      history.append(total + jnp.asarray(mu_w, total.dtype) * jnp.sum(state.W))
      bar.set_postfix(epoch=epoch + 1, objective=f"{float(history[-1]):.4g}")
  return StreamingNMFResult(state.W, jnp.stack(history), state)
