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

from conejax import _checks, _nmf_init, _nmf_steps, _scale, solvers

_METHODS = ("mu", "hals", "anls")
_INITS = tuple(_nmf_init.INITS)


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


def _normalise_atoms(W, H, mu_w, mu_h):
  """Unit-norm atoms when no penalty fixes the scale; zero atoms are left alone."""
  norm = jnp.linalg.norm(W, axis=0)
  scale = jnp.where((norm > 0) & (mu_w == 0) & (mu_h == 0), norm, 1)[None]
  return W / scale, H * scale


def _iterate(step, W, H, norm_u2, *, max_iter, tol):
  """Applies ``step(W, H) -> (W, H, objective)`` until max_iter or a relative decrease < tol.

  Returns W, H, the objective history (max_iter,) and the number of steps taken. Its
  scalars are built ``*_like(norm_u2)`` so that they keep its type under shard_map.
  """
  inf = jnp.full_like(norm_u2, jnp.inf)

  def cond(carry):
    _, _, it, previous, current, _ = carry
    stalled = (tol > 0) & (previous - current < tol * previous)
    return (it < max_iter) & ~stalled

  def body(carry):
    W, H, it, _, current, history = carry
    W, H, value = step(W, H)
    return W, H, it + 1, current, value, history.at[it].set(value)

  history = jnp.zeros_like(norm_u2, shape=(max_iter,))
  carry = (W, H, jnp.zeros((), jnp.int32), inf, inf, history)
  W, H, n_iter, _, final, history = lax.while_loop(cond, body, carry)
  return W, H, jnp.where(jnp.arange(max_iter) < n_iter, history, final), n_iter


def _fit(U, mask, W, H, mu_w, mu_h, *, method, max_iter, tol, inner, unit_atoms=False):
  """The jittable core: runs outer steps until max_iter or a relative decrease < tol.

  With ``unit_atoms`` every step starts from unit-norm atoms (H rescaled to match), so each
  H update solves the projection's problem on unit atoms, and the returned atoms are unit;
  the drivers then replace H by the exact sparse codes on them (``_exact_codes``), so H is
  what ``codes`` gives the training data.
  """
  update = _nmf_steps.UPDATES[method]
  Ut = U.T
  norm_u2 = jnp.sum(U**2)

  def step(W, H):
    if unit_atoms:
      W, H = _unit_atoms(W, H)
    W, H, A, B = _nmf_steps.outer_step(update, U, Ut, W, H, mu_w, mu_h, inner)
    H = H * mask[:, None]
    return W, H, _nmf_steps.objective_from_stats(norm_u2, W, H, A, B, mu_w, mu_h)

  W, H, history, n_iter = _iterate(step, W, H, norm_u2, max_iter=max_iter, tol=tol)
  if unit_atoms:
    return (*_unit_atoms(W, H), history, n_iter)
  W, H = _normalise_atoms(W, H, mu_w, mu_h)
  return W, H, history, n_iter


@jax.jit
def _exact_codes(W, U, mask, mu_h):
  """Exact sparse codes of each U_k (K, n, m) on its own W_k (K, m, d) with its own
  penalty mu_h[k] (K,), masked rows zero.

  Run after the fit, one class at a time (``lax.map``): the active-set solve is not
  vmapped (XLA:CPU deadlocked on it inside the per-class vmap, jax 0.10.2).
  """
  solver = solvers.resolve("auto", n_atoms=W.shape[-1])

  def one(args):
    W, U, mask, mu_h = args
    problem = solvers.QuadraticProblem(_nmf_steps.gram(W), _nmf_steps.dot(U, W), mu_h)
    return solvers.solve(solver, problem).h * mask[:, None]

  return lax.map(one, (W, U, mask, mu_h))


def _unit_atoms(W, H):
  norm = jnp.linalg.norm(W, axis=0)
  scale = jnp.where(norm > 0, norm, 1)
  return W / scale[None], H * scale[None]


_STATIC = ("method", "max_iter", "tol", "inner", "unit_atoms")


@functools.partial(jax.jit, static_argnames=_STATIC + ("init",))
def _nmf_jit(key, U, W0, H0, mu_w, mu_h, *, init, method, max_iter, tol, inner, unit_atoms):
  mask = jnp.ones(U.shape[:1], U.dtype)
  if init is not None:
    W0, H0 = _nmf_init.INITS[init](key, U, W0.shape[1], mask)
  return _fit(U, mask, W0, H0, mu_w, mu_h, method=method, max_iter=max_iter, tol=tol,
              inner=inner, unit_atoms=unit_atoms)


@functools.partial(jax.jit, static_argnames=_STATIC + ("init", "rank", "class_batch_size"))
def _nmf_per_class_jit(keys, U, mask, mu_w, mu_h, *, rank, init, method, max_iter, tol,
                       inner, class_batch_size, unit_atoms):
  init_fn = _nmf_init.INITS[init]
  fit = functools.partial(_fit, method=method, max_iter=max_iter, tol=tol, inner=inner,
                          unit_atoms=unit_atoms)

  def one_class(args):
    key, U, mask, mu_w, mu_h = args
    W0, H0 = init_fn(key, U, rank, mask)
    return fit(U, mask, W0, H0, mu_w, mu_h)

  return lax.map(one_class, (keys, U, mask, mu_w, mu_h), batch_size=class_batch_size)


def _check_data(U, name):
  U = _checks.as_float_array(U, name)
  _checks.check_ndim(U, name, (2,), "(N, m), samples as rows")
  if 0 in U.shape:
    empty = "rows" if U.shape[0] == 0 else "features"
    raise ValueError(f"{name} has no {empty}, shape {tuple(U.shape)}; NMF needs at least one "
                     "sample and one feature (skip empty chunks).")
  _checks.check_finite(U, name)
  _checks.check_nonnegative(U, name)
  return U


def _check_options(rank, method, max_iter, tol, inner_iter, mu_w, mu_h, dtype):
  rank = _checks.check_positive_int(rank, "rank")
  method = _checks.check_choice(method, "method", _METHODS)
  max_iter = _checks.check_positive_int(max_iter, "max_iter")
  tol = _checks.check_tol(tol)
  inner = _nmf_steps.DEFAULT_INNER[method] if inner_iter is None else inner_iter
  inner = _checks.check_positive_int(inner, "inner_iter")
  mu_w = _checks.check_penalty(mu_w, "mu_w").astype(dtype)
  mu_h = _checks.check_penalty(mu_h, "mu_h").astype(dtype)
  return rank, method, max_iter, tol, inner, mu_w, mu_h


def _check_nmf(U, rank, init, method, max_iter, tol, inner_iter, mu_w, mu_h):
  """``nmf``'s arguments checked: U, the options, and init with (W0, H0).

  For a named init, returns its name and W0 = H0 = None; for a pair, None and the pair.
  """
  U = _check_data(U, "U")
  options = _check_options(rank, method, max_iter, tol, inner_iter, mu_w, mu_h, U.dtype)
  rank, (n, m) = options[0], U.shape
  if rank > min(n, m):
    raise ValueError(f"rank {rank} exceeds min(N, m) = {min(n, m)} for U of shape {(n, m)}; "
                     "choose a smaller rank.")
  if isinstance(init, str):
    return U, options, _checks.check_choice(init, "init", _INITS), None, None
  if len(init) != 2:
    raise ValueError("init must be 'random', 'nndsvda', 'kmeans' or a pair (W0, H0).")
  W0, H0 = (_check_data(x, name) for x, name in zip(init, ("W0", "H0")))
  if W0.shape != (m, rank) or H0.shape != (n, rank):
    raise ValueError(f"init arrays must have shapes W0 {(m, rank)} and H0 {(n, rank)}; got "
                     f"{tuple(W0.shape)} and {tuple(H0.shape)}.")
  return U, options, None, W0.astype(U.dtype), H0.astype(U.dtype)


def nmf(U, rank: int, *, key: jax.Array, mu_w=0.0, mu_h=0.0, method: str = "hals",
        init="nndsvda", max_iter: int = 200, tol: float = 1e-5,
        inner_iter: int | None = None, unit_atoms: bool = False) -> NMFResult:
  """Sparse NMF: min 0.5 ||U - H W^T||_F^2 + mu_w |W|_1 + mu_h |H|_1 over W, H >= 0.

  Args:
    U: (N, m) non-negative data, samples as rows.
    rank: number of atoms d, at most min(N, m).
    key: PRNG key for the random init or the randomised SVD of NNDSVDa.
    mu_w, mu_h: L1 weights >= 0 on the dictionary and on the codes.
    method: "mu" (multiplicative updates), "hals" (hierarchical alternating least
      squares) or "anls" (each factor by the accelerated NNLS of ``conejax.nnls``).
    init: "random", "nndsvda", "kmeans" (atoms at k-means centroids, codes by NNLS), or a
      pair (W0 (m, d), H0 (N, d)) of non-negative arrays.
    max_iter: outer iterations (one update of H, then of W).
    tol: stop when the objective falls by less than ``tol`` times itself in one
      iteration; 0 runs all ``max_iter`` iterations.
    inner_iter: updates of each factor per outer iteration for "mu" and "hals" (default 1,
      the classical algorithms; more reuses the expensive products with U), or the FISTA
      iteration cap per subproblem for "anls" (default 50).
    unit_atoms: renormalise the atoms to unit length after every iteration (H rescaled to
      match), so that with mu_h > 0 the returned H is the penalised code of U on the
      returned W: ``conejax.nnls(W, u, mu_h)`` of each row, the cones' projection.

  Returns:
    ``NMFResult`` with ``W`` (m, d), ``H`` (N, d), ``objective`` (max_iter,), ``n_iter``.

  Raises:
    ValueError: on negative or non-finite data, a rank above min(N, m), a negative
      penalty, an unknown method or init, or init arrays of the wrong shape.

  Example:
    >>> import jax, numpy as np, conejax
    >>> U = np.random.default_rng(0).random((100, 20), dtype=np.float32)
    >>> fit = conejax.nmf(U, 5, key=jax.random.key(0), max_iter=50)
    >>> fit.W.shape, fit.H.shape
    ((20, 5), (100, 5))
  """
  U, options, init, W0, H0 = _check_nmf(U, rank, init, method, max_iter, tol, inner_iter,
                                         mu_w, mu_h)
  rank, method, max_iter, tol, inner, mu_w, mu_h = options
  s, U, mu_w, mu_h, H0 = unit_scale(U, mu_w, mu_h, H0)
  if init is not None:
    W0 = jnp.zeros((U.shape[1], rank), U.dtype)
  W, H, history, n_iter = _nmf_jit(key, U, W0, H0, mu_w, mu_h, init=init, method=method,
                                   max_iter=max_iter, tol=tol, inner=inner,
                                   unit_atoms=bool(unit_atoms))
  if unit_atoms:
    H = _exact_codes(W[None], U[None], jnp.ones((1, U.shape[0]), U.dtype), mu_h[None])[0]
  return NMFResult(*rescale(s, W, H, history, n_iter))


def unit_scale(U, mu_w, mu_h, H0=None):
  """U / s for s = max(U) (1 when U is zero or not finite), with the penalties and H0 to
  match.

  For U = s U' and H = s H' (W unchanged), 0.5 ||U - H W^T||^2 + mu_w |W| + mu_h |H| is s^2
  times the objective of (U', W, H') with penalties mu_w / s^2 and mu_h / s: the same
  fit, with every square in the float range. Dividing by max(U) itself (not a nearby
  power of two) also makes the scale-dependent parts of the inits (NNDSVDa fills zeros
  with mean(U), as scikit-learn does) see the same data for U and c U, so fits are
  equivariant: nmf(c U) = (W, c H). Returns (s, U', mu_w', mu_h', H0'); ``rescale`` maps
  the fit back. Eager (the drivers call it outside jit): no reassociation of the chained
  divisions.
  """
  top = jnp.max(U)
  s = jnp.where(jnp.isfinite(top) & (top > 0), top, jnp.ones_like(top))
  return s, U / s, mu_w / s / s, mu_h / s, None if H0 is None else H0 / s


def rescale(s, W, H, history, *rest):
  """The fit of U' = U / s mapped back to U: H times s, the objective times s^2."""
  return (W, H * s, history * s * s, *rest)


def unit_scale_per_class(U, mu_w, mu_h):
  """``unit_scale`` of every class of U (K, n, m) by its own maximum: s (K,), U / s and the
  penalties (K,), so that each class is fitted exactly as ``nmf`` fits it alone."""
  top = jnp.max(U, axis=(1, 2))
  s = jnp.where(jnp.isfinite(top) & (top > 0), top, jnp.ones_like(top))
  return s, U / s[:, None, None], mu_w / s / s, mu_h / s


def scatter_codes(H, s, index, mask, n):
  """Per-class codes H (K, n_k, d) at unit scale, times s (K,), back in input order (n, d)."""
  H = H * s[:, None, None]
  return jnp.zeros((n, H.shape[-1]), H.dtype).at[index[mask]].set(H[mask])


def _group_by_class(y, rank):
  """Row indices of each class, padded to the largest class, and the matching mask."""
  y = _cone_labels(y)
  classes, counts = np.unique(y, return_counts=True)
  if counts.min() < rank:
    small = classes[counts.argmin()]
    raise ValueError(f"class {small.item()!r} has {counts.min()} samples, fewer than rank {rank}; "
                     "lower the rank or add samples.")
  index = np.zeros((len(classes), counts.max()), np.int64)
  mask = np.zeros(index.shape, bool)
  for k, label in enumerate(classes):
    rows = np.flatnonzero(y == label)
    index[k, :len(rows)], mask[k, :len(rows)] = rows, True
  return classes, index, mask


def _cone_labels(y):
  _checks.require_concrete("nmf_per_class", "Group the samples by class outside jit.", y=y)
  return _checks.check_labels(y, "y", "pass one number or string per sample")


def _check_per_class(X, y, rank, init, method, max_iter, tol, inner_iter, mu_w, mu_h):
  """``nmf_per_class``'s arguments checked; returns X, the options, init and the grouping."""
  X = _check_data(X, "X")
  options = _check_options(rank, method, max_iter, tol, inner_iter, mu_w, mu_h, X.dtype)
  init = _checks.check_choice(init, "init", _INITS)
  y = _cone_labels(y)
  if len(y) != X.shape[0]:
    raise ValueError(f"y has {len(y)} labels but X has {X.shape[0]} rows; pass one label "
                     "per row.")
  if options[0] > X.shape[1]:
    raise ValueError(f"rank {options[0]} exceeds the number of features m = {X.shape[1]}.")
  return X, options, init, _group_by_class(y, options[0])


def nmf_per_class(X, y, rank: int, *, key: jax.Array, mu_w=0.0, mu_h=0.0,
                  method: str = "hals", init: str = "nndsvda", max_iter: int = 200,
                  tol: float = 1e-5, inner_iter: int | None = None,
                  class_batch_size: int = 5, unit_atoms: bool = False) -> NMFResult:
  """One sparse NMF dictionary per class, all classes in one jitted computation.

  Classes are padded to the size of the largest one and a sample mask keeps the padding
  out of every statistic, so no class is truncated and class k's result equals
  ``nmf(X[y == classes[k]], rank, key=jax.random.split(key, K)[k], ...)``.

  Args:
    X: (N, m) non-negative data, samples as rows.
    y: (N,) class labels (any sortable values).
    rank: atoms per class, at most the size of the smallest class and m.
    class_batch_size: classes fitted side by side with ``vmap``; groups of them run one
      after another inside the same computation. On a 2-core CPU (ten MNIST digits, 30,000
      images, rank 64) 5 was fastest: 20% ahead of 1 and 15% ahead of 10 for "mu".
    Other arguments: as in ``nmf`` (``init`` must be "random", "nndsvda" or "kmeans").

  Returns:
    ``NMFResult`` with ``W`` (K, m, d), ``H`` (N, d) (each sample on its own class's
    dictionary), ``objective`` (K, max_iter), ``n_iter`` (K,) and ``classes`` (K,).

  Raises:
    ValueError: as ``nmf``, plus labels that are not 1-D or do not match X, or a class
      with fewer samples than ``rank``.
  """
  X, options, init, (classes, index, mask) = _check_per_class(
      X, y, rank, init, method, max_iter, tol, inner_iter, mu_w, mu_h)
  rank, method, max_iter, tol, inner, mu_w, mu_h = options
  class_batch_size = _checks.check_positive_int(class_batch_size, "class_batch_size")
  U = X[index] * jnp.asarray(mask, X.dtype)[..., None]
  s, U, mu_w, mu_h = unit_scale_per_class(U, mu_w, mu_h)
  keys = jax.random.split(key, len(classes))
  W, H, history, n_iter = _nmf_per_class_jit(
      keys, U, jnp.asarray(mask, X.dtype), mu_w, mu_h, rank=rank, init=init, method=method,
      max_iter=max_iter, tol=tol, inner=inner, class_batch_size=class_batch_size,
      unit_atoms=bool(unit_atoms))
  if unit_atoms:
    H = _exact_codes(W, U, jnp.asarray(mask, X.dtype), mu_h)
  codes = scatter_codes(H, s, index, mask, X.shape[0])
  return NMFResult(W, codes, history * s[:, None] * s[:, None], n_iter, classes)
