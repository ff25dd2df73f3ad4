"""Sparse NMF drivers: one dictionary, or one per class in a single batched computation.

Minimises 0.5 ||U - H W^T||_F^2 + mu_w |W|_1 + mu_h |H|_1 over W >= 0 and H >= 0, with the
samples as rows of U (N, m), atoms as the columns of W (m, d) and codes H (N, d).

Scale. For any diagonal S > 0, (W S, H S^-1) fits U as well as (W, H). Without penalties
the returned atoms are normalised to unit Euclidean norm and H absorbs the scale, which
leaves the objective unchanged. With both penalties the objective itself fixes the scale.
With one penalty alone the infimum is approached by shrinking the penalised factor and
growing the other; conejax then returns the iterates as they are (normalise W yourself if
you need unit atoms).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from conejax import _checks, _nmf_checks, _nmf_init, _nmf_steps, solvers
from conejax._nmf_steps import dot as _dot



class NMFResult(NamedTuple):
  """A fitted factorisation U ~ H W^T.

  Attributes:
    W: (m, d) dictionary, atoms as columns (leading (K,) axis for ``nmf_per_class``).
    H: (N, d) codes, one row per sample (for ``nmf_per_class``: each sample's code on
      the dictionary of its own class, in the input order).
    objective: (max_iter,) objective after each iteration; entries from ``n_iter`` on
      repeat the final value.
    n_iter: () int32 iterations run (fewer than max_iter when ``tol`` stopped the fit).
    classes: (K,) class labels for ``nmf_per_class``, else None.
  """
  W: jax.Array
  H: jax.Array
  objective: jax.Array
  n_iter: jax.Array
  classes: np.ndarray | None = None


def _iterate(step, state, like, *, max_iter, tol):
  """Applies ``step(state) -> (state, objective)`` until max_iter or a relative decrease < tol.

  Returns the final state, the objective history (max_iter,) and the number of steps taken.
  Its scalars are built ``*_like(like)`` so that they keep its type under shard_map.
  """
  inf = jnp.full_like(like, jnp.inf)

  def cond(carry):
    _, it, previous, current, _ = carry
    stalled = (tol > 0) & (previous - current < tol * previous)
    return (it < max_iter) & ~stalled

  def body(carry):
    state, it, _, current, history = carry
    state, value = step(state)
    return state, it + 1, current, value, history.at[it].set(value)

  history = jnp.zeros_like(like, shape=(max_iter,))
  carry = (state, jnp.zeros((), jnp.int32), inf, inf, history)
  state, n_iter, _, final, history = lax.while_loop(cond, body, carry)
  return state, jnp.where(jnp.arange(max_iter) < n_iter, history, final), n_iter


def local_sum(x):
  """The identity: sums over this process's rows are already complete (one device)."""
  return x


def fit_factors(U, mask, W, H, mu_w, mu_h, *, method, max_iter, tol, inner, unit_atoms=False,
                beta=2.0, weights=None, n_fixed=0, reduce=local_sum):
  """The NMF core, jittable: outer steps (H, then W) until max_iter or a decrease < tol.

  U (n, m) and H (n, d) are this device's rows, W (m, d) is replicated, mask (n,) zeroes the
  codes of padding rows. Every sum over rows that W's update or the objective needs goes
  through ``reduce``: ``local_sum`` on one device, an all-reduce over the data axis under
  shard_map (``conejax._sharding``). ``nmf``, ``nmf_per_class`` (under ``lax.map``), the
  sharded drivers and ``nmf_codes`` all run this function.

  Two kinds of step. The Frobenius loss without weights needs only the statistics U W,
  W^T W, U^T H and H^T H (one reduce per iteration) and runs "mu", "hals" or "anls". A
  beta-divergence (``beta`` != 2) or entry weights (n, m) need H W^T, which is carried from
  one step to the next so that each iteration forms it twice (after each factor's update):
  multiplicative updates (two reduces per iteration, W's statistics and the objective),
  or for the weighted Frobenius loss exact HALS on the residual U - H W^T (one reduce per
  atom of W).

  The first ``n_fixed`` atoms are kept exactly as given (``n_fixed = d``: codes only).
  With ``unit_atoms`` every step starts from unit-norm atoms (H rescaled to match), so each
  H update solves the projection's problem on unit atoms, and the returned atoms are unit;
  the drivers then replace H by the exact sparse codes on them (``_exact_codes``), so H is
  what ``codes`` gives the training data. Otherwise the atoms are made unit at the end when
  no penalty fixes the scale (``_nmf_steps.atom_scale``); fixed atoms are never rescaled.

  Returns:
    W, H, the objective history (max_iter,) and the number of iterations.
  """
  d = W.shape[1]
  fixed = jnp.arange(d) < n_fixed
  keep_fixed = lambda new, old: jnp.where(fixed[None], old, new) if n_fixed else new

  def start(W, H):
    return _rescale_atoms(W, H, _nmf_steps.atom_scale(W, 0, 0, n_fixed)) if unit_atoms else (W, H)

  if beta == 2 and weights is None:
    update = _nmf_steps.UPDATES[method]
    Ut = U.T  # passed in so that XLA never transposes U inside the loop
    like = norm_u2 = reduce(jnp.sum(U**2))

    def update_atoms(W, A, B):
      if n_fixed == d:
        return W
      if method == "mu":  # simultaneous: update every atom, then restore the fixed ones
        return keep_fixed(update(W, A, B, mu_w, inner), W)
      # coordinate-wise: the new atoms' subproblem, the fixed atoms moved to the data side
      A_new = A[:, n_fixed:] - _dot(W[:, :n_fixed], B[:n_fixed, n_fixed:])
      W_new = update(W[:, n_fixed:], A_new, B[n_fixed:, n_fixed:], mu_w, inner)
      return jnp.concatenate([W[:, :n_fixed], W_new], axis=1)

    def step(state):
      W, H = start(*state)
      H = update(H, _dot(U, W), _dot(W.T, W), mu_h, inner) * mask[:, None]
      A, B, sum_h = reduce((_dot(Ut, H), _dot(H.T, H), jnp.sum(H)))
      W = update_atoms(W, A, B)
      return (W, H), _nmf_steps.objective_from_stats(norm_u2, W, sum_h, A, B, mu_w, mu_h)

    state = (W, H)
  else:
    rows = mask[:, None] if weights is None else weights * mask[:, None]
    like = reduce(jnp.sum(U[:1, :1]))  # a scalar typed as the objective under shard_map

    def hals_step(state):  # weighted Frobenius: exact coordinate steps on the residual
      W, H, WH = state
      H, E = _nmf_steps.weighted_hals_codes(H, W, U - WH, weights, mu_h, inner)
      H = H * mask[:, None]
      if n_fixed < d:
        W, E = _nmf_steps.weighted_hals_atoms(W, H, E, weights, mu_w, inner, n_fixed, reduce)
      WH = U - E
      fit, sum_h = reduce((0.5 * jnp.sum(rows * E**2), jnp.sum(H)))
      return (W, H, WH), fit + mu_w * jnp.sum(W) + mu_h * sum_h

    def step(state):
      W, H, WH = state
      if unit_atoms:
        W, H = start(W, H)
      for i in range(inner):
        WH = WH if i == 0 else _dot(H, W.T)
        H = _nmf_steps.mu_beta_codes(U, W, H, WH, mu_h, beta, weights) * mask[:, None]
      WH = _dot(H, W.T)
      for _ in range(inner if n_fixed < d else 0):
        W = keep_fixed(_nmf_steps.mu_beta_atoms(U, W, H, WH, mu_w, beta, weights, reduce), W)
        WH = _dot(H, W.T)
      fit, sum_h = reduce((_nmf_steps.beta_divergence(U, WH, beta, rows), jnp.sum(H)))
      return (W, H, WH), fit + mu_w * jnp.sum(W) + mu_h * sum_h

    state = (W, H, _dot(H, W.T))
    step = hals_step if method == "hals" else step

  state, history, n_iter = _iterate(step, state, like, max_iter=max_iter, tol=tol)
  W, H = state[:2]
  scale = _nmf_steps.atom_scale(W, 0 if unit_atoms else mu_w, 0 if unit_atoms else mu_h,
                                n_fixed)
  return (*_rescale_atoms(W, H, scale), history, n_iter)


def _rescale_atoms(W, H, scale):
  """(W / scale, H * scale) for a scale (d,) per atom: the same product H W^T."""
  return W / scale[None], H * scale[None]


@jax.jit
def _exact_codes(W, U, mask, mu_h):
  """Exact sparse codes of each U_k (K, n, m) on its own W_k (K, m, d) with its own
  penalty mu_h[k] (K,), masked rows zero.

  Run after the fit, one class at a time (``lax.map``): the active-set solve is not
  vmapped (XLA:CPU deadlocked on it inside the per-class vmap, jax 0.10.2).
  """
  solver = solvers.resolve("auto", n_atoms=W.shape[-1], n_features=W.shape[-2])

  def one(args):
    W, U, mask, mu_h = args
    problem = solvers.QuadraticProblem(_nmf_steps.gram(W), _nmf_steps.dot(U, W), mu_h)
    return solvers.solve(solver, problem).h * mask[:, None]

  return lax.map(one, (W, U, mask, mu_h))


_STATIC = ("method", "max_iter", "tol", "inner", "unit_atoms", "beta")


@functools.partial(jax.jit, static_argnames=_STATIC + ("init",))
def _nmf_jit(key, U, W0, H0, mu_w, mu_h, weights, fixed, *, init, method, max_iter, tol, inner,
             unit_atoms, beta):
  mask = jnp.ones(U.shape[:1], U.dtype)
  if init is not None:
    filled = _nmf_init.fill_missing(U, weights, mask)
    W0, H0 = _nmf_init.INITS[init](key, filled, W0.shape[1], mask)
    W0, H0 = _nmf_init.with_fixed_atoms(U, W0, H0, fixed, mask)
  elif fixed is not None:
    W0 = jnp.concatenate([fixed, W0], axis=1)
  return fit_factors(U, mask, W0, H0, mu_w, mu_h, method=method, max_iter=max_iter, tol=tol,
                     inner=inner, unit_atoms=unit_atoms, beta=beta, weights=weights,
                     n_fixed=0 if fixed is None else fixed.shape[1])


@functools.partial(jax.jit, static_argnames=_STATIC + ("init", "rank", "class_batch_size"))
def _nmf_per_class_jit(keys, U, mask, mu_w, mu_h, weights, fixed, *, rank, init, method,
                       max_iter, tol, inner, class_batch_size, unit_atoms, beta):
  init_fn = _nmf_init.INITS[init]
  fit = functools.partial(fit_factors, method=method, max_iter=max_iter, tol=tol, inner=inner,
                          unit_atoms=unit_atoms, beta=beta,
                          n_fixed=0 if fixed is None else fixed.shape[1])

  def one_class(args):
    key, U, mask, mu_w, mu_h, weights = args
    W0, H0 = init_fn(key, _nmf_init.fill_missing(U, weights, mask), rank, mask)
    W0, H0 = _nmf_init.with_fixed_atoms(U, W0, H0, fixed, mask)
    return fit(U, mask, W0, H0, mu_w, mu_h, weights=weights)

  return lax.map(one_class, (keys, U, mask, mu_w, mu_h, weights), batch_size=class_batch_size)


def nmf(U, rank: int, *, key: jax.Array, mu_w=0.0, mu_h=0.0, method: str | None = None,
        init="nndsvda", max_iter: int = 200, tol: float = 1e-5,
        inner_iter: int | None = None, unit_atoms: bool = False, beta_loss="frobenius",
        weights=None, missing: str | None = None, fixed_atoms=None) -> NMFResult:
  """Sparse NMF: min D_beta(U | H W^T) + mu_w |W|_1 + mu_h |H|_1 over W, H >= 0.

  D_beta is summed over the entries, each times its weight: with the default Frobenius
  loss it is 0.5 ||U - H W^T||_F^2; "kullback-leibler" and "itakura-saito" (and any float
  beta) are scikit-learn's ``beta_loss``, fitted by the multiplicative updates of Fevotte
  and Idier (2011) exactly as scikit-learn's ``NMF(solver="mu")`` does (same iterates from
  the same init, see docs/nmf.md for the penalty conventions: mu_h is scikit-learn's
  n_features * alpha_W * l1_ratio, mu_w its n_samples * alpha_H * l1_ratio).

  Args:
    U: (N, m) non-negative data, samples as rows.
    rank: number of atoms d to learn (beside ``fixed_atoms``). Up to min(N, m) for the
      "nndsvda" and "kmeans" inits; any rank with "random" or a pair for "mu" and "hals"
      (an overcomplete dictionary); "anls" needs at most m atoms in all.
    key: PRNG key for the random init or the randomised SVD of NNDSVDa.
    mu_w, mu_h: L1 weights >= 0 on the dictionary and on the codes.
    method: "mu" (multiplicative updates), "hals" (hierarchical alternating least
      squares) or "anls" (each factor by exact NNLS, ``conejax.solvers.ActiveSet``); None
      is "hals" for the unweighted Frobenius loss and "mu" otherwise. Beta-divergences
      need "mu"; weights take "mu" or "hals" (exact coordinate steps on the weighted
      residual, O(N m d) elementwise work per sweep).
    init: "random", "nndsvda", "kmeans" (atoms at k-means centroids, codes by NNLS), or a
      pair (W0 (m, d), H0 (N, d0 + d)) of non-negative arrays: a warm start, every atom of
      W0 is then learnt (H0's first d0 columns are the codes of ``fixed_atoms``). The
      named inits see missing entries filled by their feature's weighted mean.
    max_iter: outer iterations (one update of H, then of W).
    tol: stop when the objective falls by less than ``tol`` times itself in one
      iteration; 0 runs all ``max_iter`` iterations.
    inner_iter: updates of each factor per outer iteration for "mu" and "hals" (default 1,
      the classical algorithms; more reuses the expensive products with U), or the
      pivoting cap per row for "anls" (default 50).
    unit_atoms: renormalise the learnt atoms to unit length after every iteration (H
      rescaled to match), so that with mu_h > 0 the returned H is the penalised code of U
      on the returned W: ``conejax.nnls(W, u, mu_h)`` of each row, the cones' projection.
      Frobenius loss without weights only.
    beta_loss: "frobenius" (2), "kullback-leibler" (1), "itakura-saito" (0) or a float
      beta. Entries of U where H W^T < float32 eps use eps in its place where beta < 2,
      as scikit-learn does (at the unit scale U / max(U)); beta <= 0 needs U > 0 wherever
      the weight is not 0.
    weights: (N, m) weights in [0, 1] of the entries of U (0 = missing), or None.
    missing: None, or "nan": NaN entries of U are missing (weight 0).
    fixed_atoms: (m, d0) non-negative atoms kept exactly as given (bitwise), learnt beside
      ``rank`` new ones; W is then [fixed_atoms, new atoms] (m, d0 + rank). Without
      penalties only the new atoms are normalised.

  Returns:
    ``NMFResult`` with ``W`` (m, d0 + d), ``H`` (N, d0 + d), ``objective`` (max_iter,) and
    ``n_iter``.

  Raises:
    ValueError: on negative or non-finite data (NaN is allowed with ``missing="nan"``), a
      rank the init or method cannot reach, a negative penalty, an unknown method, init
      or beta_loss, a method other than "mu" for a beta-divergence, "anls" with weights,
      weights outside [0, 1] or not of U's shape, zeros of U under beta <= 0, or init or
      fixed arrays of the wrong shape.

  Example:
    >>> import jax, numpy as np, conejax
    >>> U = np.random.default_rng(0).random((100, 20), dtype=np.float32)
    >>> fit = conejax.nmf(U, 5, key=jax.random.key(0), max_iter=50)
    >>> fit.W.shape, fit.H.shape
    ((20, 5), (100, 5))
    >>> kl = conejax.nmf(U, 5, key=jax.random.key(0), beta_loss="kullback-leibler")
    >>> kl.W.shape
    (20, 5)
  """
  p = _nmf_checks.check_nmf(U, rank, init, method, max_iter, tol, inner_iter, mu_w, mu_h,
                 beta_loss=beta_loss, weights=weights, missing=missing, fixed_atoms=fixed_atoms)
  if unit_atoms and (p.beta != 2 or p.weights is not None):
    raise ValueError("unit_atoms serves the cones' Frobenius projection; it needs "
                     "beta_loss='frobenius' without weights.")
  s, U, mu_w, mu_h, H0 = unit_scale(p.U, p.mu_w, p.mu_h, p.H0, beta=p.beta, weights=p.weights)
  W0 = jnp.zeros((U.shape[1], p.rank), U.dtype) if p.init is not None else p.W0
  W, H, history, n_iter = _nmf_jit(key, U, W0, H0, mu_w, mu_h, p.weights, p.fixed, init=p.init,
                                   method=p.method, max_iter=p.max_iter, tol=p.tol,
                                   inner=p.inner, unit_atoms=bool(unit_atoms), beta=p.beta)
  if unit_atoms:
    H = _exact_codes(W[None], U[None], jnp.ones((1, U.shape[0]), U.dtype), mu_h[None])[0]
  return NMFResult(*rescale(s, W, H, history, n_iter, beta=p.beta))


def unit_scale(U, mu_w, mu_h, H0=None, *, beta=2.0, weights=None):
  """U / s for s = max(U) (1 when U is zero or not finite), with the penalties and H0 to
  match.

  For U = s U' and H = s H' (W unchanged), D_beta(U | H W^T) + mu_w |W| + mu_h |H| is
  s^beta times the objective of (U', W, H') with penalties mu_w / s^beta and
  mu_h / s^(beta - 1) (mu_w / s^2 and mu_h / s for the Frobenius loss): the same fit,
  with every power in the float range. Dividing by max(U) itself (not a nearby power of
  two) also makes the scale-dependent parts of the inits (NNDSVDa fills zeros with
  mean(U), as scikit-learn does) see the same data for U and c U, so fits are
  equivariant: nmf(c U) = (W, c H). Returns (s, U', mu_w', mu_h', H0'); ``rescale`` maps
  the fit back. Eager (the drivers call it outside jit): no reassociation of the chained
  divisions. With weights, s is the maximum over the entries of non-zero weight: the
  values at missing entries change nothing.
  """
  top = jnp.max(U if weights is None else jnp.where(weights > 0, U, 0))
  s = jnp.where(jnp.isfinite(top) & (top > 0), top, jnp.ones_like(top))
  if beta == 2:
    mu_w, mu_h = mu_w / s / s, mu_h / s
  else:
    mu_w, mu_h = mu_w / s**beta, mu_h / s ** (beta - 1)
  return s, U / s, mu_w, mu_h, None if H0 is None else H0 / s


def rescale(s, W, H, history, *rest, beta=2.0):
  """The fit of U' = U / s mapped back to U: H times s, the objective times s^beta."""
  return (W, H * s, history * s * s if beta == 2 else history * s**beta, *rest)


def unit_scale_per_class(U, mu_w, mu_h, *, beta=2.0, weights=None):
  """``unit_scale`` of every class of U (K, n, m) by its own maximum: s (K,), U / s and the
  penalties (K,), so that each class is fitted exactly as ``nmf`` fits it alone."""
  top = jnp.max(U if weights is None else jnp.where(weights > 0, U, 0), axis=(1, 2))
  s = jnp.where(jnp.isfinite(top) & (top > 0), top, jnp.ones_like(top))
  if beta == 2:
    return s, U / s[:, None, None], mu_w / s / s, mu_h / s
  return s, U / s[:, None, None], mu_w / s**beta, mu_h / s ** (beta - 1)


def scatter_codes(H, s, index, mask, n):
  """Per-class codes H (K, n_k, d) at unit scale, times s (K,), back in input order (n, d)."""
  H = H * s[:, None, None]
  return jnp.zeros((n, H.shape[-1]), H.dtype).at[index[mask]].set(H[mask])


def nmf_per_class(X, y, rank: int, *, key: jax.Array, mu_w=0.0, mu_h=0.0,
                  method: str | None = None, init: str = "nndsvda", max_iter: int = 200,
                  tol: float = 1e-5, inner_iter: int | None = None,
                  class_batch_size: int = 5, unit_atoms: bool = False, beta_loss="frobenius",
                  weights=None, missing: str | None = None, fixed_atoms=None,
                  exact_codes: bool = True) -> NMFResult:
  """One sparse NMF dictionary per class, all classes in one jitted computation.

  Classes are padded to the size of the largest one and a sample mask keeps the padding
  out of every statistic, so no class is truncated and class k's result equals
  ``nmf(X[y == classes[k]], rank, key=jax.random.split(key, K)[k], ...)``.

  Args:
    X: (N, m) non-negative data, samples as rows.
    y: (N,) class labels (any sortable values).
    rank: atoms per class, at most the size of the smallest class and m (any rank with
      init "random" and method "mu" or "hals").
    class_batch_size: classes fitted side by side with ``vmap``; groups of them run one
      after another inside the same computation. On a 2-core CPU (ten MNIST digits, 30,000
      images, rank 64) 5 was fastest: 20% ahead of 1 and 15% ahead of 10 for "mu".
    weights: (N, m) entry weights in [0, 1], grouped with X.
    fixed_atoms: (m, d0) atoms shared by every class and kept fixed.
    exact_codes: with ``unit_atoms``, replace H by the exact sparse codes on the final
      atoms (an active-set solve per class, as ``nmf`` does); False keeps the last
      iterate's H, for callers that need only W (``fit_cones``: one solve and its
      compilation fewer).
    Other arguments: as in ``nmf`` (``init`` must be "random", "nndsvda" or "kmeans").

  Returns:
    ``NMFResult`` with ``W`` (K, m, d0 + d), ``H`` (N, d0 + d) (each sample on its own
    class's dictionary), ``objective`` (K, max_iter), ``n_iter`` (K,) and ``classes`` (K,).

  Raises:
    ValueError: as ``nmf``, plus labels that are not 1-D or do not match X, or a class
      with fewer samples than ``rank`` (for the "nndsvda" and "kmeans" inits).
  """
  p, (classes, index, mask) = _nmf_checks.check_per_class(
      X, y, rank, init, method, max_iter, tol, inner_iter, mu_w, mu_h, beta_loss=beta_loss,
      weights=weights, missing=missing, fixed_atoms=fixed_atoms)
  if unit_atoms and (p.beta != 2 or p.weights is not None):
    raise ValueError("unit_atoms serves the cones' Frobenius projection; it needs "
                     "beta_loss='frobenius' without weights.")
  class_batch_size = _checks.check_positive_int(class_batch_size, "class_batch_size")
  rows = jnp.asarray(mask, p.U.dtype)
  U = p.U[index] * rows[..., None]
  weights = None if p.weights is None else p.weights[index] * rows[..., None]
  s, U, mu_w, mu_h = unit_scale_per_class(U, p.mu_w, p.mu_h, beta=p.beta, weights=weights)
  keys = jax.random.split(key, len(classes))
  W, H, history, n_iter = _nmf_per_class_jit(
      keys, U, rows, mu_w, mu_h, weights, p.fixed, rank=p.rank, init=p.init, method=p.method,
      max_iter=p.max_iter, tol=p.tol, inner=p.inner, class_batch_size=class_batch_size,
      unit_atoms=bool(unit_atoms), beta=p.beta)
  if unit_atoms and exact_codes:
    H = _exact_codes(W, U, rows, mu_h)
  codes = scatter_codes(H, s, index, mask, p.U.shape[0])
  history = history * s[:, None] * s[:, None] if p.beta == 2 else history * s[:, None]**p.beta
  return NMFResult(W, codes, history, n_iter, classes)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _codes_jit(V, W, H0, mu_h, weights, *, method, max_iter, tol, inner, unit_atoms, beta):
  mask = jnp.ones(V.shape[:1], V.dtype)
  return fit_factors(V, mask, W, H0, jnp.zeros_like(mu_h), mu_h, method=method,
                     max_iter=max_iter, tol=tol, inner=inner, unit_atoms=unit_atoms, beta=beta,
                     weights=weights, n_fixed=W.shape[1])


def nmf_codes(W, V, *, mu_h=0.0, beta_loss="frobenius", method: str | None = None,
              weights=None, missing: str | None = None, init=None, max_iter: int = 200,
              tol: float = 1e-5, inner_iter: int | None = None) -> NMFResult:
  """Codes on a fixed dictionary: min_{H >= 0} D_beta(V | H W^T) + mu_h |H|_1, W unchanged.

  The H half of ``nmf``: the same loss, weights and updates, with every atom fixed, so a
  dictionary learnt under a beta-divergence codes new data under the same one. With the
  multiplicative updates and the default init it is scikit-learn's ``NMF.transform``
  (``solver="mu"``): ``non_negative_factorization(V, H=W.T, update_H=False, ...)``.

  Args:
    W: (m, d) non-negative dictionary, atoms as columns.
    V: (N, m) non-negative data, samples as rows.
    mu_h: L1 weight >= 0 on the codes.
    beta_loss: as in ``nmf``.
    method: "mu", "hals" or "anls" (the last two for the unweighted Frobenius loss); None
      as in ``nmf``.
    weights: (N, m) entry weights in [0, 1] (0 = missing), or None; ``missing="nan"``
      gives NaN entries of V weight 0. The reconstruction ``H @ W.T`` then imputes them.
    init: (N, d) non-negative starting codes, or None for scikit-learn's constant
      sqrt(mean(V) / d).
    max_iter, tol, inner_iter: as in ``nmf``.

  Returns:
    ``NMFResult`` with ``W`` (the input), ``H`` (N, d), ``objective`` (max_iter,) and
    ``n_iter``.

  Raises:
    ValueError: as ``nmf`` for V, the loss and the options; W not (m, d) non-negative and
      finite with V's m; init not (N, d).
  """
  W = _nmf_checks.check_data(W, "W")
  V = _nmf_checks.check_data(V, "V", allow_nan=missing == "nan")
  V, beta, weights = _nmf_checks.check_loss(V, beta_loss, weights, missing)
  if W.shape[0] != V.shape[1]:
    raise ValueError(f"W is (m, d) = {tuple(W.shape)} but V has {V.shape[1]} features; pass V "
                     "as (N, m), samples as rows.")
  W = W.astype(V.dtype)
  d = W.shape[1]
  _, method, max_iter, tol, inner, _, mu_h = _nmf_checks.check_options(
      d, method, max_iter, tol, inner_iter, 0.0, mu_h, V.dtype, beta, weights is not None)
  if init is None:
    mean = jnp.mean(V) if weights is None else jnp.sum(weights * V) / jnp.sum(weights)
    H0 = jnp.full((V.shape[0], d), jnp.sqrt(mean / d), V.dtype)
  else:
    H0 = _nmf_checks.check_data(init, "init").astype(V.dtype)
    if H0.shape != (V.shape[0], d):
      raise ValueError(f"init must be the codes (N, d) = {(V.shape[0], d)}; got "
                       f"{tuple(H0.shape)}.")
  s, V, _, mu_h, H0 = unit_scale(V, 0.0, mu_h, H0, beta=beta, weights=weights)
  _, H, history, n_iter = _codes_jit(V, W, H0, mu_h, weights, method=method, max_iter=max_iter,
                                     tol=tol, inner=inner, unit_atoms=False, beta=beta)
  return NMFResult(*rescale(s, W, H, history, n_iter, beta=beta))
