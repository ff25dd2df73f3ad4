"""Sparse non-negative least squares: the public entry points over ``conejax.solvers``.

For every sample v (a row of V, shape (m,)) and a dictionary W (m, d), atoms as columns,

    h*(v) = argmin_{h >= 0}  0.5 ||W h - v||^2 + mu sum(h),

solved in its Gram form with G = W^T W (formed once per call) and c = W^T v. The solver is
any ``conejax.solvers`` object or its name; "auto" (the default) is the exact active-set
solver. ``penalty="relative"`` reads mu as a fraction of each sample's largest useful
penalty max_j (W^T v)_j (above which h* = 0), so one value suits data of any scale.

Outside ``jit``, a solve that stopped at ``max_iter`` above its tolerance emits
``conejax.ConvergenceWarning``; a penalty that zeroes most codes emits a ``UserWarning``
naming the largest useful value. ``result.converged`` says the same under ``jit``.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from conejax import _checks, _loops, _scale, solvers
from conejax.solvers import NNLSResult, QuadraticProblem

_HIGHEST = lax.Precision.HIGHEST
PENALTIES = ("absolute", "relative")


def relative_scale(C: jax.Array) -> jax.Array:
  """max_j c_j per sample (1 where it is <= 0): the penalty above which h* = 0."""
  top = jnp.max(C, axis=-1)
  return jnp.where(top > 0, top, jnp.ones_like(top))


def solve_gram(G, C, mu, H0=None, *, solver, batch_size: int = 2048,
               differentiation: str = "implicit", penalty: str = "absolute") -> NNLSResult:
  """The traced core: C (n, d) on one Gram matrix G (d, d) by ``solver`` (an object).

  Every sample is solved at unit scale (``_scale``): with G = 4^k G' and q = c - mu =
  2^j q' (powers of two near max diag G and max |q|, so the scaling is exact),
  h*(G, c; mu) = 2^j 4^-k h*(G', q'; 0), so float32 problems of any scale neither under-
  nor overflow inside the solver, and a sample's answer does not depend on its batch. With
  ``penalty="relative"`` mu is first multiplied by each sample's max_j c_j (above which
  h* = 0), which keeps one scalar mu for data of any scale.
  """
  H0 = jnp.zeros_like(C) if H0 is None else H0
  mu = jnp.asarray(mu, C.dtype)
  if penalty == "relative":
    mu = mu * relative_scale(C)[:, None]
  Q = C - mu                                                    # the penalty, folded in
  eg = 2 * (_scale.exponent_of(jnp.diag(G), None) // 2)        # even: sqrt(4^k) is exact
  eq = _scale.exponent_of(Q, -1)[:, None]
  out = solvers.solve(solver, QuadraticProblem(jnp.ldexp(G, -eg), jnp.ldexp(Q, -eq),
                                               jnp.zeros((), C.dtype)),
                      jnp.ldexp(H0, eg - eq), batch_size=batch_size,
                      differentiation=differentiation)
  return out._replace(h=jnp.ldexp(out.h, eq - eg))


_STATIC = ("solver", "batch_size", "differentiation", "penalty")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _nnls_gram_jit(G, C, mu, H0, *, solver, batch_size, differentiation, penalty):
  batch_shape, d = C.shape[:-1], C.shape[-1]
  out = solve_gram(G, C.reshape(-1, d), mu, H0.reshape(-1, d), solver=solver,
                   batch_size=batch_size, differentiation=differentiation, penalty=penalty)
  return NNLSResult(out.h.reshape(batch_shape + (d,)), out.n_iter.reshape(batch_shape),
                    out.residual.reshape(batch_shape), out.converged.reshape(batch_shape))


WEIGHTED_ENTRIES = 2**22  # entries of diag(sqrt(m)) W formed at once by weighted solves


def _solve_weighted(W, M, C, mu, H0, **options):
  """Each sample x with weights m (a row of M (n, m)) on its own Gram B^T B, B = diag(sqrt(m))
  W, with C (n, d) holding W^T (m x) (less the folded penalty). ``solve_gram`` on one sample at a
  time (vmap), ``batch_size`` samples at a time, fewer where their B's would exceed
  WEIGHTED_ENTRIES."""
  chunk = max(1, min(options["batch_size"], WEIGHTED_ENTRIES // W.size))
  options = dict(options, batch_size=1)

  def one(m, c, h0):
    B = jnp.sqrt(m)[:, None] * W
    out = solve_gram(jnp.dot(B.T, B, precision=_HIGHEST), c[None], mu, h0[None], **options)
    return jax.tree.map(lambda a: a[0], out)

  return _loops.in_chunks(lambda a: jax.vmap(one)(*a), (M, C, H0), chunk)


MIN_ROWS = 64  # the fewest rows a product is formed with (see solve_dictionary)


@functools.partial(jax.jit, static_argnames=_STATIC)
def solve_dictionary(W, V, mu, H0, weights=None, *, solver, batch_size, differentiation,
                     penalty):
  """Codes of V (..., m) on W (m, d), or on each of K stacked dictionaries (K, m, d).

  Each sample is divided by a power of two 2^a near its largest entry and each dictionary
  by one, 2^b, near its own, before W^T W and V W are formed (so they cannot under- or
  overflow); h = 2^(a - b) g where g solves the problem of v 2^-a on W 2^-b with the
  penalty mu 2^-(a + b), folded into the right-hand side so that it can differ per sample.

  With entry weights M (..., m) in [0, 1] (0 = missing), each sample solves
  min_{h >= 0} 0.5 sum_j m_j ((W h)_j - v_j)^2 + mu sum(h), the NNLS through diag(sqrt(m)):
  its own Gram W^T diag(m) W and c = W^T (m v), exact with the active set (a (d, d) Gram
  per sample; 2^a is then taken over the entries of non-zero weight). All-ones weights give
  the unweighted codes.
  """
  options = dict(solver=solver, batch_size=batch_size, differentiation=differentiation)
  m, d = W.shape[-2:]
  W3 = W if W.ndim == 3 else W[None]
  batch = V.shape[:-1]
  X = V.reshape(-1, m)
  M = None if weights is None else weights.reshape(-1, m)
  H0 = (H0 if W.ndim == 3 else H0[..., None, :]).reshape(X.shape[0], W3.shape[0], d)
  # XLA:CPU picks its matrix-product kernel by the number of rows: below about 50 rows
  # (a lone row: matrix-vector products) a row's product V W rounds differently from the
  # same row's in a larger batch (1e-5 relative in float32 codes on k-means cones, 1e-4 on
  # a 120 x 40 dictionary): fewer than MIN_ROWS samples are solved with copies of
  # themselves up to MIN_ROWS rows, so a code is bitwise its code in any batch.
  n = X.shape[0]
  padded = 0 < n < MIN_ROWS
  if padded:
    pad = jnp.arange(MIN_ROWS) % n
    X, H0 = X[pad], H0[pad]
    M = None if M is None else M[pad]
  ea = _scale.exponent_of(X if M is None else jnp.where(M > 0, X, 0), -1)
  eb = _scale.exponent_of(W3, (1, 2))
  X = jnp.ldexp(X, -ea[:, None])

  def one(args):
    W_k, eb_k, H0_k = args
    W_k = jnp.ldexp(W_k, -eb_k)
    C = jnp.dot(X if M is None else M * X, W_k, precision=_HIGHEST)
    shift = (ea - eb_k)[:, None]
    H0_k = jnp.ldexp(H0_k, -shift)
    if penalty == "relative":
      mu_k, rest = mu, dict(options, penalty="relative")
    else:  # folded into C, so that it can differ per sample
      C, mu_k, rest = C - jnp.ldexp(mu, -(ea + eb_k))[:, None], jnp.zeros_like(mu), options
    if M is None:
      out = solve_gram(jnp.dot(W_k.T, W_k, precision=_HIGHEST), C, mu_k, H0_k, **rest)
    else:
      out = _solve_weighted(W_k, M, C, mu_k, H0_k, **rest)
    return out._replace(h=jnp.ldexp(out.h, shift))

  out = lax.map(one, (W3, eb, jnp.moveaxis(H0, 1, 0)))           # leaves (K, n, ...)
  if padded:
    out = jax.tree_util.tree_map(lambda x: x[:, :n], out)
  if W.ndim == 2:
    return NNLSResult(*(x[0].reshape(batch + x.shape[2:]) for x in out))
  return NNLSResult(*(jnp.moveaxis(x, 0, 1).reshape(batch + (W3.shape[0],) + x.shape[2:])
                      for x in out))


def warm_start(h0, shape, dtype):
  if h0 is None:
    return jnp.zeros(shape, dtype)
  h0 = jnp.asarray(h0, dtype)
  if h0.shape != shape:
    raise ValueError(f"h0 must have the shape of the result, {shape}; got {tuple(h0.shape)}.")
  _checks.check_finite(h0, "h0")
  return h0


def check_options(solver, *, max_iter, tol, batch_size, differentiation, penalty="absolute",
                  loss="l2", matrix_free=False, n_atoms=None, n_features=None):
  """Validates the shared solver options; returns the solver object and batch_size."""
  _checks.check_choice(differentiation, "differentiation", solvers.DIFFERENTIATIONS)
  _checks.check_choice(penalty, "penalty", PENALTIES)
  batch_size = _checks.check_positive_int(batch_size, "batch_size")
  solver = solvers.resolve(solver, loss=loss, matrix_free=matrix_free,
                           differentiation=differentiation, max_iter=max_iter, tol=tol,
                           n_atoms=n_atoms, n_features=n_features)
  return solver, batch_size


def report(result: NNLSResult, where: str, mu=None, C_fn=None, stacklevel: int = 3):
  """Outside jit: warns on unconverged samples and on a penalty that zeroes most codes.

  ``C_fn`` computes W^T v (only called when the warning is due) to name the largest
  useful penalty.
  """
  solvers.warn_if_not_converged(result, where, stacklevel=stacklevel + 1)
  if mu is None or not _checks.is_concrete(mu) or not _checks.is_concrete(result.h):
    return
  mu = float(np.asarray(mu))
  if mu <= 0:
    return
  h = np.asarray(result.h)
  zero = np.all(h == 0, axis=-1)
  if zero.mean() <= 0.5:
    return
  hint = ""
  if C_fn is not None:
    top = np.max(np.asarray(C_fn()), axis=-1)
    hint = (f"; the largest useful value is max(W^T v) (median over the samples "
            f"{float(np.median(top)):.3g})")
  warnings.warn(f"{where}: the penalty {mu:.3g} zeroes every code of {int(zero.sum())} of "
                f"{zero.size} samples{hint}. Lower it, or give it relative to each sample "
                "(penalty='relative').", UserWarning, stacklevel=stacklevel + 1)


def check_gram(G):
  """Outside jit: G must be symmetric positive semi-definite (to rounding), as W^T W is."""
  if not _checks.is_concrete(G) or G.size == 0:
    return
  G64 = np.asarray(G, np.float64)
  scale = max(float(np.max(np.abs(G64))), np.finfo(np.float64).tiny)
  tol = 100 * np.finfo(np.asarray(G).dtype).eps * G.shape[0] * scale
  asymmetry = float(np.max(np.abs(G64 - G64.T)))
  if asymmetry > tol:
    raise ValueError(f"G must be symmetric (a Gram matrix W^T W); max |G - G^T| is "
                     f"{asymmetry:.3g}. Pass W^T W, or (G + G.T) / 2.")
  smallest = float(np.linalg.eigvalsh(G64)[0])
  if smallest < -tol:
    raise ValueError(f"G must be positive semi-definite (a Gram matrix W^T W); its smallest "
                     f"eigenvalue is {smallest:.3g}. Pass W^T W for a dictionary W.")


def nnls_gram(G, C, mu=0.0, *, solver="auto", max_iter: int | None = None,
              tol: float | None = None, h0=None, batch_size: int = 2048,
              differentiation: str = "implicit", penalty: str = "absolute") -> NNLSResult:
  """Sparse NNLS from the Gram form: argmin_{h >= 0} 0.5 h^T G h - c^T h + mu sum(h).

  For callers that already hold G = W^T W and C = V W (one row c = W^T v per sample).

  Args:
    G: (d, d) symmetric positive semi-definite Gram matrix W^T W.
    C: (..., d) right-hand sides W^T v, one per sample.
    mu: scalar L1 weight >= 0 (may be traced: sweep, vmap or differentiate it).
    solver: a ``conejax.solvers`` object, or "auto" (default: ``ActiveSet``, exact, for
      up to 128 atoms; ``ADMM`` above),
      "active_set", "apg" or "admm" (see the README's solver section for what each is
      for).
    max_iter: iteration cap of a named solver; None is its default (ActiveSet 1000
      pivoting steps, rarely more than a few used; APG and ADMM 1000 iterations).
    tol: residual tolerance of a named iterative solver; None is its default (APG 1e-6
      float32 / 1e-10 float64, ADMM 1e-5 / 1e-10). ActiveSet is exact and has none.
    h0: optional (..., d) warm start.
    batch_size: samples per chunk.
    differentiation: "implicit" (KKT conditions on the support, any solver) or "unroll"
      (exactly ``max_iter`` iterations of APG or ADMM, reverse mode through each).
    penalty: "absolute" (mu as given) or "relative" (mu times each sample's max_j c_j,
      the value above which its code is zero; 0 <= mu < 1 keeps codes non-zero).

  Returns:
    ``NNLSResult`` with ``h`` (..., d), ``n_iter``, ``residual`` and ``converged`` (...).

  Raises:
    ValueError: on wrong shapes or dtypes, non-finite values, mu < 0 or bad options.

  Warns:
    ConvergenceWarning: outside jit, when samples stopped at ``max_iter`` unconverged.
  """
  G = _checks.as_float_array(G, "G")
  C = _checks.as_float_array(C, "C")
  _checks.check_ndim(G, "G", (2,), "(d, d)")
  if G.shape[-1] == 0:
    raise ValueError(f"G must have at least one atom (d >= 1); got shape "
                     f"{tuple(G.shape)}.")
  if G.shape[0] != G.shape[1] or C.ndim < 1 or C.shape[-1] != G.shape[0]:
    raise ValueError(f"G must be (d, d) and C (..., d) with the same d; got G {tuple(G.shape)} "
                     f"and C {tuple(C.shape)}.")
  dtype = jnp.result_type(G, C)
  mu = _checks.check_penalty(mu, "mu").astype(dtype)
  solver, batch_size = check_options(solver, max_iter=max_iter, tol=tol, batch_size=batch_size,
                                     differentiation=differentiation, penalty=penalty,
                                     n_atoms=G.shape[0])
  _checks.check_finite(G, "G")
  _checks.check_finite(C, "C")
  check_gram(G)
  H0 = warm_start(h0, C.shape, dtype)
  out = _nnls_gram_jit(G.astype(dtype), C.astype(dtype), mu, H0, solver=solver,
                       batch_size=batch_size, differentiation=differentiation, penalty=penalty)
  report(out, "nnls_gram", mu if penalty == "absolute" else None, lambda: C)
  return out


def nnls(W, V, mu=0.0, *, solver="auto", max_iter: int | None = None,
         tol: float | None = None, h0=None, batch_size: int = 2048,
         differentiation: str = "implicit", penalty: str = "absolute") -> NNLSResult:
  """Sparse NNLS: argmin_{h >= 0} 0.5 ||W h - v||^2 + mu sum(h) for every row v of V.

  W^T W is formed once per call and V W once per batch, then ``nnls_gram`` solves.

  Args:
    W: (m, d) dictionary with atoms as columns, or (K, m, d) for K stacked dictionaries
      (each sample is then coded on each dictionary, one dictionary at a time).
    V: (m,) or (..., m) samples as rows.
    mu: scalar L1 weight >= 0.
    solver, max_iter, tol, batch_size, differentiation, penalty: as in ``nnls_gram``.
    h0: optional warm start with the shape of the result.

  Returns:
    ``NNLSResult`` with ``h`` of shape (..., d), or (..., K, d) for stacked dictionaries;
    ``n_iter``, ``residual`` and ``converged`` of shape (...) or (..., K).

  Raises:
    ValueError: on wrong shapes or dtypes, non-finite values, mu < 0 or bad options.

  Warns:
    ConvergenceWarning: outside jit, when samples stopped at ``max_iter`` unconverged.

  Example:
    >>> import jax.numpy as jnp, conejax
    >>> W = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> conejax.nnls(W, jnp.array([1.0, -1.0, 0.0])).h.round(4)
    Array([0.5, 0. ], dtype=float32)
  """
  W = _checks.as_float_array(W, "W")
  V = _checks.as_float_array(V, "V")
  _checks.check_ndim(W, "W", (2, 3), "(m, d) or (K, m, d)")
  if W.shape[-1] == 0:
    raise ValueError(f"W must have at least one atom (a column: d >= 1); got shape "
                     f"{tuple(W.shape)}.")
  if V.ndim < 1 or V.shape[-1] != W.shape[-2]:
    raise ValueError(f"V must have shape (..., m) with m = W.shape[-2] = {W.shape[-2]}; got "
                     f"{tuple(V.shape)}. Samples are rows.")
  _checks.check_finite(W, "W")
  _checks.check_finite(V, "V")
  dtype = jnp.result_type(W, V)
  mu = _checks.check_penalty(mu, "mu").astype(dtype)
  solver, batch_size = check_options(solver, max_iter=max_iter, tol=tol, batch_size=batch_size,
                                     differentiation=differentiation, penalty=penalty,
                                     n_atoms=W.shape[-1], n_features=W.shape[-2])
  H0 = warm_start(h0, V.shape[:-1] + W.shape[:-2] + W.shape[-1:], dtype)
  out = solve_dictionary(W.astype(dtype), V.astype(dtype), mu, H0, solver=solver,
                  batch_size=batch_size, differentiation=differentiation, penalty=penalty)
  report(out, "nnls", mu if penalty == "absolute" else None,
         lambda: jnp.einsum("...m,...md->...d", V[..., None, :] if W.ndim == 3 else V, W))
  return out
