"""Sparse non-negative least absolute deviations: the public entry point.

argmin_{h >= 0} ||B h - v||_1 + mu sum(h) for every row v of V, by the restarted Halpern
PDHG of ``conejax.solvers.PDHG`` (see there for the method and its measured iteration
counts), through the shared driver.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from conejax import _checks, _nnls, solvers
from conejax.solvers import L1Problem, NNLSResult


@functools.partial(jax.jit, static_argnames=("solver", "batch_size"))
def _nnls_l1_jit(B, V, mu, H0, *, solver, batch_size):
  batch_shape, (k, d) = V.shape[:-1], B.shape
  out = solvers.solve(solver, L1Problem(B, V.reshape(-1, k), mu), H0.reshape(-1, d),
                      batch_size=batch_size)
  return NNLSResult(out.h.reshape(batch_shape + (d,)), out.n_iter.reshape(batch_shape),
                    out.residual.reshape(batch_shape), out.converged.reshape(batch_shape))


def nnls_l1(B, V, mu=0.0, *, solver="auto", max_iter: int | None = None,
            tol: float | None = None, h0=None, batch_size: int = 2048) -> NNLSResult:
  """Sparse non-negative least absolute deviations for every row v of V.

  Solves argmin_{h >= 0} ||B h - v||_1 + mu sum(h) by restarted, diagonally
  preconditioned Chambolle-Pock iterations (``conejax.solvers.PDHG``); robust to impulsive
  noise where ``nnls`` is not.

  Args:
    B: (k, d) dictionary with atoms as columns, e.g. an operator applied to W.
    V: (k,) or (..., k) samples as rows.
    mu: scalar L1 weight >= 0 (may be traced: sweep or vmap it).
    solver: "auto" / "pdhg", or a ``conejax.solvers.PDHG`` object (e.g. with
      ``precondition=False`` for scalar steps).
    max_iter: iteration cap per sample; None is 5000.
    tol: tolerance on the scale-free duality gap plus dual infeasibility; None picks 1e-4
      (float32) or 1e-7 (float64).
    h0: optional (..., d) warm start.
    batch_size: samples per chunk.

  Returns:
    ``NNLSResult`` with ``h`` (..., d), ``n_iter``, ``residual`` (the final error) and
    ``converged`` (...).

  Raises:
    ValueError: on wrong shapes or dtypes, non-finite values, mu < 0 or bad options.

  Warns:
    ConvergenceWarning: outside jit, when samples stopped at ``max_iter`` unconverged.

  Example:
    >>> import jax.numpy as jnp, conejax
    >>> B = jnp.array([[1.0], [1.0], [1.0]])
    >>> conejax.nnls_l1(B, jnp.array([1.0, 1.0, 9.0])).h.round(3)
    Array([1.], dtype=float32)

  References:
    Chambolle and Pock, A first-order primal-dual algorithm for convex problems with
    applications to imaging, JMIV 2011. Pock and Chambolle, Diagonal preconditioning for
    first order primal-dual algorithms in convex optimization, ICCV 2011. Applegate et al.,
    Practical large-scale linear programming using primal-dual hybrid gradient (PDLP),
    NeurIPS 2021. Lu and Yang, Restarted Halpern PDHG for linear programming, 2024.
  """
  B = _checks.as_float_array(B, "B")
  V = _checks.as_float_array(V, "V")
  _checks.check_ndim(B, "B", (2,), "(k, d)")
  if B.shape[-1] == 0:
    raise ValueError(f"B must have at least one atom (a column: d >= 1); got shape "
                     f"{tuple(B.shape)}.")
  if V.ndim < 1 or V.shape[-1] != B.shape[0]:
    raise ValueError(f"V must have shape (..., k) with k = B.shape[0] = {B.shape[0]}; got "
                     f"{tuple(V.shape)}. Samples are rows.")
  _checks.check_finite(B, "B")
  _checks.check_finite(V, "V")
  dtype = jnp.result_type(B, V)
  mu = _checks.check_penalty(mu, "mu").astype(dtype)
  solver, batch_size = _nnls.check_options(solver, max_iter=max_iter, tol=tol,
                                           batch_size=batch_size, differentiation="implicit",
                                           loss="l1")
  H0 = _nnls.warm_start(h0, V.shape[:-1] + B.shape[-1:], dtype)
  out = _nnls_l1_jit(B.astype(dtype), V.astype(dtype), mu, H0, solver=solver,
                     batch_size=batch_size)
  _nnls.report(out, "nnls_l1")
  return out
