"""One outer iteration of sparse NMF: multiplicative updates, HALS and ANLS.

Minimises 0.5 ||U - H W^T||_F^2 + mu_w |W|_1 + mu_h |H|_1 over W >= 0 (m, d) and H >= 0 (N, d),
samples as rows of U (N, m). Each factor update only needs the sufficient statistics of
the other factor: for H, P = U W (N, d) and Q = W^T W (d, d); for W, A = U^T H (m, d) and
B = H^T H (d, d). So one outer iteration costs two products with U (4 N m d flops) and
everything else is O((N + m) d^2); ``inner`` repeats the cheap part, reusing P, Q or A, B,
as in the accelerated MU and HALS of Gillis and Glineur (2012). Every method updates H
first and W second, as scikit-learn does, so with ``inner=1`` the iterates match its
"mu" and "cd" solvers.

All three rules share one signature, ``update(X, P, Q, mu, inner) -> X``, for the factor X
(n, d) with statistics P (n, d), Q (d, d) and penalty mu, the factor's L1 weight: with the
halved data term, the H-subproblem of a row is exactly ``conejax.nnls(W, u, mu_h)``, the
projection of the cones, so one mu_h means the same in training and projection.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from conejax import _checks, _scale, solvers

_HIGHEST = lax.Precision.HIGHEST


def dot(a, b):
  """a @ b at full float32 precision."""
  return jnp.dot(a, b, precision=_HIGHEST)


def gram(W):
  """W^T W (d, d)."""
  return dot(W.T, W)


_dot = dot


def mu_update(X, P, Q, mu, inner: int):
  """Multiplicative update X <- X * P / (X Q + mu), repeated ``inner`` times.

  A zero denominator is replaced by float32 eps, as in scikit-learn; the product X * P is
  formed first so an entry at zero stays exactly zero and no 0 * inf can appear.
  """
  eps = jnp.asarray(jnp.finfo(jnp.float32).eps, X.dtype)
  for _ in range(inner):
    denominator = _dot(X, Q) + mu
    X = X * P / jnp.where(denominator > 0, denominator, eps)
  return X


def hals_update(X, P, Q, mu, inner: int):
  """HALS: exact coordinate minimisation, one column of X at a time, ``inner`` sweeps.

  Column k gets max(0, x_k + (p_k - X q_k - mu) / Q_kk). When the other factor's column k
  is zero (Q_kk = 0, a dead atom) column k is left as it is, as in scikit-learn: the
  other factor's next update then sees a non-zero column and can revive the atom.
  """
  diag = jnp.diag(Q)
  safe = jnp.where(diag > 0, diag, 1)
  live = ~(diag <= 0)  # a NaN Q_kk updates too: NaN statistics give NaN, never the old X
  Xt, Pt = X.T, P.T  # rows are contiguous: column k of X is row k of Xt

  def column(k, Xt):
    xk = Xt[k] + (Pt[k] - _dot(Q[k], Xt) - mu) / safe[k]
    return Xt.at[k].set(jnp.where(live[k], jnp.maximum(xk, 0), Xt[k]))

  for _ in range(inner):
    Xt = lax.fori_loop(0, X.shape[1], column, Xt)
  return Xt.T


def anls_update(X, P, Q, mu, inner: int):
  """Exact NNLS of every row of X by the active-set solver, warm-started at X.

  ``inner`` caps its pivoting steps per row (a few suffice; the solve is exact when it
  stops below the cap).
  """
  problem = solvers.QuadraticProblem(Q, P, jnp.asarray(mu, X.dtype))
  return solvers.solve(solvers.ActiveSet(max_iter=inner), problem, X).h


UPDATES = {"mu": mu_update, "hals": hals_update, "anls": anls_update}
DEFAULT_INNER = {"mu": 1, "hals": 1, "anls": 50}


def objective_from_stats(norm_u2, W, sum_h, A, B, mu_w, mu_h):
  """0.5 ||U - H W^T||^2 + penalties, from ||U||^2, A = U^T H, B = H^T H and sum(H) (H itself
  may be passed): no pass over U."""
  fit = norm_u2 - 2 * jnp.sum(W * A) + jnp.sum(_dot(W.T, W) * B)
  return 0.5 * jnp.maximum(fit, 0) + mu_w * jnp.sum(W) + mu_h * jnp.sum(sum_h)


def atom_scale(W, mu_w, mu_h, n_fixed: int = 0):
  """The norms (d,) that make W's atoms unit when no penalty fixes the scale, else ones.

  For any diagonal S > 0, (W S^-1, H S) fits as (W, H); with a penalty on either factor the
  rescaling changes the objective, so the scale is 1. Zero atoms and the first ``n_fixed``
  atoms (kept fixed by the fit) get 1.
  """
  norm = jnp.linalg.norm(W, axis=0)
  free = (jnp.arange(W.shape[1]) >= n_fixed) & (norm > 0) & (mu_w == 0) & (mu_h == 0)
  return jnp.where(free, norm, jnp.ones_like(norm))


def objective(U, W, H, mu_w=0.0, mu_h=0.0, *, beta_loss="frobenius"):
  """The sparse NMF objective D(U | H W^T) + mu_w |W|_1 + mu_h |H|_1, directly.

  D is 0.5 ||U - H W^T||_F^2 for ``beta_loss="frobenius"`` (the default), else the
  beta-divergence that ``nmf(..., beta_loss=...)`` minimises, summed over the entries
  (``beta_divergence``; scikit-learn's ``_beta_divergence``). U is (N, m), W (m, d) and
  H (N, d); returns a scalar. The Frobenius residual norm is taken at unit scale
  (``_scale.norm``), so data of any magnitude gives the objective unless the value itself
  leaves the float range. Works under ``jit``, ``vmap`` and ``grad``.

  Raises:
    ValueError: on arrays that are not 2-D floating, shapes that do not chain, or negative
      or non-finite penalties.
  """
  U, W, H = (_checks.as_float_array(x, name) for x, name in ((U, "U"), (W, "W"), (H, "H")))
  for x, name, doc in ((U, "U", "(N, m)"), (W, "W", "(m, d)"), (H, "H", "(N, d)")):
    _checks.check_ndim(x, name, (2,), doc)
  if W.shape[0] != U.shape[1] or H.shape != (U.shape[0], W.shape[1]):
    raise ValueError(f"U (N, m), W (m, d) and H (N, d) must agree; got U {tuple(U.shape)}, "
                     f"W {tuple(W.shape)} and H {tuple(H.shape)}.")
  mu_w, mu_h = _checks.check_penalty(mu_w, "mu_w"), _checks.check_penalty(mu_h, "mu_h")
  from conejax._nmf_checks import beta_float  # (it imports this module)
  beta = beta_float(beta_loss)
  if beta != 2.0:
    return beta_divergence(U, _dot(H, W.T), beta) + mu_w * jnp.sum(W) + mu_h * jnp.sum(H)
  residual = U - _dot(H, W.T)
  fit = _scale.norm(residual.reshape(-1)) ** 2 if residual.size else 0.0
  return 0.5 * fit + mu_w * jnp.sum(W) + mu_h * jnp.sum(H)


# Beta-divergences by the majorisation-minimisation multiplicative updates of Fevotte and
# Idier (2011), as scikit-learn's ``solver="mu"`` computes them (sklearn/decomposition/_nmf.py,
# ``_multiplicative_update_w`` for our codes H, ``_multiplicative_update_h`` for our atoms W).

BETA_LOSSES = {"frobenius": 2.0, "kullback-leibler": 1.0, "itakura-saito": 0.0}
EPSILON = float(np.finfo(np.float32).eps)  # the floor of H W^T where beta < 2, as scikit-learn
ZERO_BELOW = float(np.finfo(np.float64).eps)  # MU iterates under it are zeroed when beta <= 1


def mm_exponent(beta: float) -> float:
  """The MM exponent gamma of Fevotte and Idier: 1 / (2 - beta), 1 or 1 / (beta - 1)."""
  if beta < 1:
    return 1.0 / (2.0 - beta)
  return 1.0 / (beta - 1.0) if beta > 2 else 1.0


def _ratios(U, WH, beta: float, weights):
  """The elementwise factors of the MU numerator, M U (WH)^(beta - 2), and denominator,
  M (WH)^(beta - 1), with M the weights; the denominator is None for unweighted KL, whose
  product with a factor is a column sum. WH is floored at EPSILON where scikit-learn does."""
  if beta == 2:
    numerator, denominator = U, WH
  else:
    safe = jnp.maximum(WH, EPSILON)
    if beta == 1:
      numerator, denominator = U / safe, None
    elif beta == 0:
      numerator, denominator = U / safe**2, 1 / safe
    else:
      numerator = U * (safe if beta < 2 else WH) ** (beta - 2)
      denominator = (safe if beta < 1 else WH) ** (beta - 1)
  if weights is not None:
    numerator = numerator * weights
    denominator = weights if denominator is None else denominator * weights
  return numerator, denominator


def _mm_step(X, numerator, denominator, mu, beta: float):
  """X * (numerator / (denominator + mu))^gamma, a zero denominator replaced by EPSILON."""
  denominator = denominator + mu
  delta = numerator / jnp.where(denominator == 0, EPSILON, denominator)
  gamma = mm_exponent(beta)
  return X * (delta if gamma == 1 else delta**gamma)


def mu_beta_codes(U, W, H, WH, mu_h, beta: float, weights=None):
  """One MM update of the codes H (n, d) for min D_beta(U | H W^T) + mu_h |H|_1; WH = H W^T.

  Rows are independent, so no sum over devices is needed. With beta < 1 entries under
  float64 eps are set to zero afterwards, as scikit-learn does.
  """
  numerator, denominator = _ratios(U, WH, beta, weights)
  if denominator is None:
    denominator = jnp.sum(W, axis=0)[None]
  else:
    denominator = dot(denominator, W)
  H = _mm_step(H, dot(numerator, W), denominator, mu_h, beta)
  return jnp.where(H < ZERO_BELOW, 0, H) if beta < 1 else H


def mu_atom_statistics(U, H, WH, beta: float, weights=None):
  """The two sums over rows of the atoms' MM update: the numerator (M U WH^(beta-2))^T H
  (m, d) and the denominator (M WH^(beta-1))^T H (m, d), or for unweighted KL the column
  sums of H (d,) (the same for every feature). Streaming NMF accumulates them per chunk."""
  numerator, denominator = _ratios(U, WH, beta, weights)
  if denominator is None:
    return dot(numerator.T, H), jnp.sum(H, axis=0)
  return dot(numerator.T, H), dot(denominator.T, H)


def zero_tiny_atoms(W, beta: float):
  """With beta <= 1 entries under float64 eps are set to zero, as scikit-learn does."""
  return jnp.where(W < ZERO_BELOW, 0, W) if beta <= 1 else W


def mu_beta_atoms(U, W, H, WH, mu_w, beta: float, weights=None, reduce=lambda x: x):
  """One MM update of the atoms W (m, d) for min D_beta(U | H W^T) + mu_w |W|_1; WH = H W^T.

  Its two sums over rows (``mu_atom_statistics``) go through ``reduce`` together (an
  all-reduce when the rows are split over devices); a zero column sum of H (unweighted KL)
  is replaced by 1.
  """
  numerator, denominator = reduce(mu_atom_statistics(U, H, WH, beta, weights))
  if denominator.ndim == 1:
    denominator = jnp.where(denominator == 0, 1, denominator)[None]
  return zero_tiny_atoms(_mm_step(W, numerator, denominator, mu_w, beta), beta)


def multiplicative_codes(forward, adjoint, V, mu, widths, *, beta: float, max_iter: int,
                         tol: float, weights=None):
  """min_{h >= 0} D_beta(v | B h) + mu |h|_1 for every row v of V, each row on its own.

  B is given only as ``forward`` (H (n, d) -> (n, k)) and ``adjoint`` (R (n, k) -> (n, d)),
  so it can be A W for a matrix-free operator A. The updates are ``mu_beta_codes``'
  (scikit-learn's floors and zeroing), H <- H * (B^T [(B H)^(beta-2) V] / (B^T (B H)^(beta-1)
  + mu))^gamma. Unlike ``nmf_codes`` (scikit-learn's ``transform``: one scale, start and
  stopping test for the batch), a row's code never depends on the other rows: each row is
  divided by its own maximum s (the penalty by s^(beta - 1)), starts at sqrt(mean(v) /
  widths) (``nmf_codes``' start for that row alone; ``widths``: the atoms in use, for
  zero-padded ragged cones) and stops by itself, after ``max_iter`` updates or when its
  objective falls by less than ``tol`` times itself (or is 0). A row with a negative entry
  gets NaN codes. Returns H (n, d) at V's scale and the updates each row ran (n,).

  With entry weights M (n, k) in [0, 1] (0 = missing) the objective is sum M d_beta(v | B h)
  + mu |h|_1 and the updates ``mu_beta_codes``' weighted ones (M inside the numerator and
  the denominator); a row's scale, start (its weighted mean) and objective then see only its
  entries of non-zero weight, so a row is ``nmf_codes(..., weights=...)`` of that row alone.
  """
  # A row with a negative entry (unchecked under jit) is NaN, never a plausible code.
  V = jnp.where(jnp.any(V < 0, axis=1, keepdims=True), jnp.nan, V)
  top = jnp.max(V if weights is None else jnp.where(weights > 0, V, 0), axis=1, keepdims=True)
  scale = jnp.where(jnp.isfinite(top) & (top > 0), top, jnp.ones_like(top))
  d = jax.eval_shape(adjoint, V[:1]).shape[1]
  if weights is None:
    mean = jnp.mean(V, axis=1, keepdims=True)
  else:  # over the observed entries (0 for a row with none)
    total = jnp.sum(weights, axis=1, keepdims=True)
    mean = jnp.sum(weights * V, axis=1, keepdims=True) / jnp.where(total > 0, total, 1)
  H = jnp.broadcast_to(jnp.sqrt(mean / widths) / scale, (V.shape[0], d))
  V, mu = V / scale, mu / scale ** (beta - 1)
  column_sums = adjoint(jnp.ones_like(V[:1])) if beta == 1 and weights is None else None

  def step(H, BH):
    numerator, denominator = _ratios(V, BH, beta, weights)
    denominator = column_sums if denominator is None else adjoint(denominator)
    H = _mm_step(H, adjoint(numerator), denominator, mu, beta)
    return jnp.where(H < ZERO_BELOW, 0, H) if beta < 1 else H

  def objective(H, BH):
    rows = jax.vmap(lambda v, bh, w: beta_divergence(v, bh, beta, w))(V, BH, weights)
    return rows + mu[:, 0] * jnp.sum(H, axis=1)

  def body(carry):
    H, BH, n_iter, active, current = carry
    H_new = step(H, BH)
    BH_new = forward(H_new)
    value = objective(H_new, BH_new)
    H = jnp.where(active[:, None], H_new, H)
    BH = jnp.where(active[:, None], BH_new, BH)
    n_iter = n_iter + active
    stalled = (tol > 0) & ((current - value < tol * current) | (value <= 0))  # 0: exact
    current = jnp.where(active, value, current)
    return H, BH, n_iter, active & ~stalled & (n_iter < max_iter), current

  n = V.shape[0]
  start = (H, forward(H), jnp.zeros(n, jnp.int32), jnp.full(n, max_iter > 0),
           jnp.full(n, jnp.inf, V.dtype))
  H, _, n_iter, _, _ = lax.while_loop(lambda c: jnp.any(c[3]), body, start)
  return H * scale, n_iter


def beta_divergence(U, WH, beta: float, weights=None):
  """sum M d_beta(U | WH) over the entries, M the weights (all ones when None).

  d_2 = (u - v)^2 / 2, d_1 = u log(u / v) - u + v (KL), d_0 = u / v - log(u / v) - 1 (IS),
  else (u^b + (b - 1) v^b - b u v^(b - 1)) / (b (b - 1)); v is floored at EPSILON where
  it divides or takes a negative power, and u = 0 gives the limit (0 log 0 = 0). For
  beta <= 0 the drivers reject u = 0 with a non-zero weight (the divergence is infinite).
  """
  if beta == 2:
    d = 0.5 * (U - WH) ** 2
  else:
    positive = U > 0
    u = jnp.where(positive, U, 1)
    safe = jnp.maximum(WH, EPSILON)
    if beta == 1:
      d = jnp.where(positive, U * jnp.log(u / safe) - U, 0) + WH
    elif beta == 0:
      ratio = u / safe
      d = ratio - jnp.log(ratio) - 1
    else:
      cross = jnp.where(positive, u**beta - beta * U * safe ** (beta - 1), 0)
      d = (cross + (beta - 1) * (safe if beta < 1 else WH) ** beta) / (beta * (beta - 1))
  return jnp.sum(d if weights is None else d * weights)


def _weighted_column(X, Y, k, E, weights, denominator, mu, reduce):
  """Exact minimisation over column k of X for 0.5 sum M (E + x_k y_k^T - x y_k^T)^2 + mu |x|:
  x = max(0, (reduce((M R) y_k) - mu) / denominator), R = E + x_k y_k^T the residual
  without atom k; a zero denominator (no weight on the atom's support) keeps x_k.
  Returns the new column and the updated residual E = R - x y_k^T."""
  x, y = X[:, k], Y[:, k]
  R = E + x[:, None] * y[None]
  numerator = reduce(dot(weights * R, y))
  safe = jnp.where(denominator > 0, denominator, 1)
  x = jnp.where(denominator > 0, jnp.maximum((numerator - mu) / safe, 0), x)
  return x, R - x[:, None] * y[None]


def weighted_hals_codes(H, W, E, weights, mu_h, inner: int):
  """HALS on the codes H (n, d) for 0.5 sum M (U - H W^T)^2 + mu_h |H|_1, exact per column.

  E = U - H W^T (n, m) is kept up to date, so a sweep costs O(n m d) elementwise work
  instead of the two Gram products of the unweighted HALS. Returns H and E.
  """
  denominator = dot(weights, W**2)  # (n, d): sum_j M_ij w_jk^2

  def column(k, carry):
    H, E = carry
    h, E = _weighted_column(H, W, k, E, weights, denominator[:, k], mu_h, lambda x: x)
    return H.at[:, k].set(h), E

  for _ in range(inner):
    H, E = lax.fori_loop(0, H.shape[1], column, (H, E))
  return H, E


def weighted_hals_atoms(W, H, E, weights, mu_w, inner: int, n_fixed: int = 0,
                        reduce=lambda x: x):
  """HALS on the atoms W (m, d), columns n_fixed.. only, for the weighted Frobenius loss;
  E = U - H W^T is this device's rows. Each column's sum over rows goes through ``reduce``
  (under shard_map one all-reduce per atom). Returns W and E."""
  denominator = reduce(dot(weights.T, H**2))  # (m, d): sum_i M_ij h_ik^2

  def column(k, carry):
    W, E = carry
    w, Et = _weighted_column(W, H, k, E.T, weights.T, denominator[:, k], mu_w, reduce)
    return W.at[:, k].set(w), Et.T

  for _ in range(inner):
    W, E = lax.fori_loop(n_fixed, W.shape[1], column, (W, E))
  return W, E
