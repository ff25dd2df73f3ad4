"""Checks of the NMF drivers' arguments, before anything is traced.

Samples are rows: data U is (N, m), the dictionary W is (m, d) with atoms as columns and
the codes H are (N, d). Value checks (signs, NaN, weights, zeros under beta <= 0) need
concrete arrays and run in numpy; they raise ValueErrors that name the fix. Under jit,
where they cannot raise, negative data (and NaN, by arithmetic) makes the fit NaN.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from conejax import _checks, _nmf_init, _nmf_steps

METHODS = ("mu", "hals", "anls")
INITS = tuple(_nmf_init.INITS)


def check_data(U, name, allow_nan=False):
  U = _checks.as_float_array(U, name)
  _checks.check_ndim(U, name, (2,), "(N, m), samples as rows")
  if 0 in U.shape:
    empty = "rows" if U.shape[0] == 0 else "features"
    raise ValueError(f"{name} has no {empty}, shape {tuple(U.shape)}; NMF needs at least one "
                     "sample and one feature (skip empty chunks).")
  seen = jnp.where(jnp.isnan(U), 0, U) if allow_nan else U
  if allow_nan and _checks.is_concrete(U) and not np.all(np.isfinite(np.asarray(seen))):
    raise ValueError(f"{name} contains Inf values; with missing='nan' only NaN marks a missing "
                     "entry. Replace the Inf entries by NaN or by finite values.")
  _checks.check_finite(seen, name)
  _checks.check_nonnegative(seen, name)
  if not _checks.is_concrete(U):
    # Under jit the sign cannot raise: a negative entry makes every entry NaN, so the fit,
    # its codes and its objective come out NaN instead of finite but meaningless. With
    # missing="nan" NaN would read as missing: there every entry becomes Inf (as would an
    # Inf entry), which the updates turn into NaN.
    bad = jnp.any(seen < 0) | (jnp.any(jnp.isinf(seen)) if allow_nan else False)
    U = jnp.where(bad, jnp.inf if allow_nan else jnp.nan, U)
  return U


def beta_float(beta_loss) -> float:
  """beta_loss as scikit-learn names it ("frobenius" 2, "kullback-leibler" 1,
  "itakura-saito" 0) or a finite float, as a Python float."""
  if isinstance(beta_loss, str):
    return _nmf_steps.BETA_LOSSES[_checks.check_choice(beta_loss, "beta_loss",
                                                       tuple(_nmf_steps.BETA_LOSSES))]
  if isinstance(beta_loss, bool) or not np.isscalar(beta_loss) or not np.isfinite(beta_loss):
    raise ValueError(f"beta_loss must be 'frobenius', 'kullback-leibler', 'itakura-saito' or a "
                     f"finite number (the beta of the beta-divergence); got {beta_loss!r}.")
  return float(beta_loss)


def check_loss(U, beta_loss, weights, missing, name: str = "U"):
  """The loss: beta (float), U with missing entries at 0, and weights (None: all ones).

  ``name`` is U's in the messages (``conejax.codes`` checks its X here too). U may have any
  shape; the weights must have the same.

  Raises:
    ValueError: on a bad beta_loss or missing, weights not of U's shape or outside [0, 1],
      or zeros of U with a non-zero weight under beta <= 0 (an infinite divergence).
  """
  beta = beta_float(beta_loss)
  if missing not in (None, "nan"):
    raise ValueError(f"missing must be None or 'nan' (NaN entries of {name} get weight 0); got "
                     f"{missing!r}.")
  if missing == "nan":
    seen = ~jnp.isnan(U)
    U = jnp.where(seen, U, 0)
  if weights is not None:
    weights = _checks.as_float_array(weights, "weights").astype(U.dtype)
    if weights.shape != U.shape:
      raise ValueError(f"weights must have {name}'s shape {tuple(U.shape)} (one weight in "
                       f"[0, 1] per entry, 0 = missing); got {tuple(weights.shape)}.")
    if _checks.is_concrete(weights):
      values = np.asarray(weights)
      if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1:
        raise ValueError("weights must be finite and in [0, 1] (0 marks a missing entry); got "
                         f"values in [{np.nanmin(values):.3g}, {np.nanmax(values):.3g}].")
    else:  # under jit: weights outside [0, 1] (or NaN) make the fit NaN
      weights = jnp.where(jnp.all((weights >= 0) & (weights <= 1)), weights, jnp.nan)
  if missing == "nan":
    weights = seen.astype(U.dtype) if weights is None else weights * seen
  if beta <= 0 and _checks.is_concrete(U) and (weights is None or _checks.is_concrete(weights)):
    zero = np.asarray(U == 0) if weights is None else np.asarray((U == 0) & (weights > 0))
    if zero.any():
      raise ValueError(f"beta_loss={beta_loss!r} (beta <= 0) is infinite where {name} is 0: "
                       f"{name} has {int(zero.sum())} zero entries with a non-zero weight. Add a "
                       f"small floor (e.g. {name} + 1e-9 * {name}.max()), or give those entries "
                       "weight 0.")
  return U, beta, weights


def check_options(rank, method, max_iter, tol, inner_iter, mu_w, mu_h, dtype, beta=2.0,
                   weighted=False):
  rank = _checks.check_positive_int(rank, "rank")
  if method is None:
    method = "hals" if beta == 2 and not weighted else "mu"
  method = _checks.check_choice(method, "method", METHODS)
  if method != "mu" and beta != 2:
    raise ValueError(f"beta_loss {beta:g} needs method='mu' (multiplicative updates); "
                     f"method={method!r} minimises the Frobenius loss only.")
  if method == "anls" and weighted:
    raise ValueError("weights (or missing='nan') need method='mu' or 'hals'; method='anls' "
                     "solves the unweighted least squares only (one Gram for every row).")
  max_iter = _checks.check_positive_int(max_iter, "max_iter")
  tol = _checks.check_tol(tol)
  inner = _nmf_steps.DEFAULT_INNER[method] if inner_iter is None else inner_iter
  inner = _checks.check_positive_int(inner, "inner_iter")
  mu_w = _checks.check_penalty(mu_w, "mu_w").astype(dtype)
  mu_h = _checks.check_penalty(mu_h, "mu_h").astype(dtype)
  return rank, method, max_iter, tol, inner, mu_w, mu_h


def check_rank(rank, method, init, shape, n_fixed=0):
  """rank new atoms: up to min(N, m) for the SVD and k-means inits, any for "random" or a
  pair; with the fixed atoms, at most m in all for "anls" (its NNLS needs a full-rank Gram)."""
  n, m = shape
  if init in ("nndsvda", "kmeans") and rank > min(n, m):
    raise ValueError(f"rank {rank} exceeds min(N, m) = {min(n, m)} for U of shape {(n, m)} with "
                     f"init={init!r}; choose a smaller rank, or init='random' (or a pair (W0, "
                     "H0)) with method 'mu' or 'hals' for an overcomplete dictionary.")
  if method == "anls" and rank + n_fixed > m:
    raise ValueError(f"method='anls' needs at most m = {m} atoms (exact NNLS on a full-rank Gram); "
                     f"got {rank + n_fixed}. Use method 'mu' or 'hals' for an overcomplete "
                     "dictionary.")


def check_fixed(fixed_atoms, m, dtype):
  if fixed_atoms is None:
    return None
  fixed = check_data(fixed_atoms, "fixed_atoms").astype(dtype)
  if fixed.shape[0] != m:
    raise ValueError(f"fixed_atoms must be (m, d0) with m = {m} rows, atoms as columns; got "
                     f"shape {tuple(fixed.shape)}.")
  return fixed


class Problem(NamedTuple):
  """``nmf``'s arguments once checked (see ``check_nmf``)."""
  U: jax.Array
  rank: int
  method: str
  max_iter: int
  tol: float
  inner: int
  mu_w: jax.Array
  mu_h: jax.Array
  init: str | None
  W0: jax.Array | None
  H0: jax.Array | None
  beta: float = 2.0
  weights: jax.Array | None = None
  fixed: jax.Array | None = None


def check_nmf(U, rank, init, method, max_iter, tol, inner_iter, mu_w, mu_h, *,
               beta_loss="frobenius", weights=None, missing=None, fixed_atoms=None) -> Problem:
  """``nmf``'s arguments checked: U, the loss, the options, init with (W0, H0), fixed atoms.

  For a named init, init is its name and W0 = H0 = None; for a pair, None and the pair
  (W0 the new atoms (m, rank), H0 the codes of every atom, fixed ones first).
  """
  U = check_data(U, "U", allow_nan=missing == "nan")
  U, beta, weights = check_loss(U, beta_loss, weights, missing)
  options = check_options(rank, method, max_iter, tol, inner_iter, mu_w, mu_h, U.dtype, beta,
                           weights is not None)
  rank, method, (n, m) = options[0], options[1], U.shape
  fixed = check_fixed(fixed_atoms, m, U.dtype)
  n_fixed = 0 if fixed is None else fixed.shape[1]
  loss = dict(beta=beta, weights=weights, fixed=fixed)
  if isinstance(init, str):
    init = _checks.check_choice(init, "init", INITS)
    check_rank(rank, method, init, (n, m), n_fixed)
    return Problem(U, *options, init, None, None, **loss)
  if len(init) != 2:
    raise ValueError("init must be 'random', 'nndsvda', 'kmeans' or a pair (W0, H0).")
  check_rank(rank, method, None, (n, m), n_fixed)
  W0, H0 = (check_data(x, name) for x, name in zip(init, ("W0", "H0")))
  if W0.shape != (m, rank) or H0.shape != (n, rank + n_fixed):
    raise ValueError(f"init arrays must have shapes W0 {(m, rank)} and H0 {(n, rank + n_fixed)}"
                     f"{' (codes of the fixed atoms first)' if n_fixed else ''}; got "
                     f"{tuple(W0.shape)} and {tuple(H0.shape)}.")
  return Problem(U, *options, None, W0.astype(U.dtype), H0.astype(U.dtype), **loss)


def group_by_class(y, rank, init="nndsvda"):
  """Row indices of each class, padded to the largest class, and the matching mask."""
  y = _cone_labels(y)
  classes, counts = np.unique(y, return_counts=True)
  if init != "random" and counts.min() < rank:
    small = classes[counts.argmin()]
    raise ValueError(f"class {small.item()!r} has {counts.min()} samples, fewer than rank {rank}; "
                     "lower the rank or add samples (or init='random' for an overcomplete "
                     "dictionary).")
  index = np.zeros((len(classes), counts.max()), np.int64)
  mask = np.zeros(index.shape, bool)
  for k, label in enumerate(classes):
    rows = np.flatnonzero(y == label)
    index[k, :len(rows)], mask[k, :len(rows)] = rows, True
  return classes, index, mask


def _cone_labels(y):
  _checks.require_concrete("nmf_per_class", "Group the samples by class outside jit.", y=y)
  return _checks.check_labels(y, "y", "pass one number or string per sample")


def check_per_class(X, y, rank, init, method, max_iter, tol, inner_iter, mu_w, mu_h, *,
                     beta_loss="frobenius", weights=None, missing=None, fixed_atoms=None):
  """``nmf_per_class``'s arguments checked; returns the ``Problem`` and the grouping."""
  X = check_data(X, "X", allow_nan=missing == "nan")
  X, beta, weights = check_loss(X, beta_loss, weights, missing)
  options = check_options(rank, method, max_iter, tol, inner_iter, mu_w, mu_h, X.dtype, beta,
                           weights is not None)
  init = _checks.check_choice(init, "init", INITS)
  y = _cone_labels(y)
  if len(y) != X.shape[0]:
    raise ValueError(f"y has {len(y)} labels but X has {X.shape[0]} rows; pass one label "
                     "per row.")
  fixed = check_fixed(fixed_atoms, X.shape[1], X.dtype)
  n_fixed = 0 if fixed is None else fixed.shape[1]
  if init != "random" and options[0] > X.shape[1]:
    raise ValueError(f"rank {options[0]} exceeds the number of features m = {X.shape[1]} for "
                     f"init={init!r}; lower it, or init='random' with method 'mu' or 'hals' for "
                     "an overcomplete dictionary.")
  check_rank(options[0], options[1], None, (options[0], X.shape[1]), n_fixed)
  problem = Problem(X, *options, init, None, None, beta, weights, fixed)
  return problem, group_by_class(y, options[0], init)
