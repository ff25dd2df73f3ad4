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
  Xt, Pt = X.T, P.T  # rows are contiguous: column k of X is row k of Xt

  def column(k, Xt):
    xk = Xt[k] + (Pt[k] - _dot(Q[k], Xt) - mu) / safe[k]
    return Xt.at[k].set(jnp.where(diag[k] > 0, jnp.maximum(xk, 0), Xt[k]))

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


def outer_step(update, U, Ut, W, H, mu_w, mu_h, inner: int):
  """Updates H, then W. Returns W, H and the statistics A = U^T H, B = H^T H of the new H.

  Ut is U^T, passed in so that XLA never transposes U inside the loop.
  """
  H = update(H, _dot(U, W), _dot(W.T, W), mu_h, inner)
  A, B = _dot(Ut, H), _dot(H.T, H)
  W = update(W, A, B, mu_w, inner)
  return W, H, A, B


def objective_from_stats(norm_u2, W, H, A, B, mu_w, mu_h):
  """0.5 ||U - H W^T||^2 + penalties, from ||U||^2, A = U^T H, B = H^T H: no pass over U."""
  fit = norm_u2 - 2 * jnp.sum(W * A) + jnp.sum(_dot(W.T, W) * B)
  return 0.5 * jnp.maximum(fit, 0) + mu_w * jnp.sum(W) + mu_h * jnp.sum(H)


def objective(U, W, H, mu_w=0.0, mu_h=0.0):
  """The sparse NMF objective 0.5 ||U - H W^T||_F^2 + mu_w |W|_1 + mu_h |H|_1, directly.

  U is (N, m), W (m, d) and H (N, d); returns a scalar. The residual norm is taken at unit
  scale (``_scale.norm``), so data of any magnitude gives the objective unless the value
  itself leaves the float range. Works under ``jit``, ``vmap`` and ``grad``.

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
  residual = U - _dot(H, W.T)
  fit = _scale.norm(residual.reshape(-1)) ** 2 if residual.size else 0.0
  return 0.5 * fit + mu_w * jnp.sum(W) + mu_h * jnp.sum(H)
