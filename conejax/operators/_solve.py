"""The regularised least-squares step of every operator: argmin ||A u - v||^2 + alpha ||u - z||^2.

It is the data step of plug-and-play restoration (``conejax.restore``) and the MAP blend of a
cone estimate with its observation (``conejax.Blend``): the solution of the normal equations
(A^T A + alpha I) u = A^T v + alpha z. For a mask and the identity A^T A is diagonal and it is
solved per pixel in closed form; for every other operator by conjugate gradients using only
``A.mv`` and ``A.T.mv`` (never a matrix), started at z (or ``x0``). With alpha = 0 (noiseless
data) CG from z converges to the projection of z onto {u : A u = v}. For the identity and a
0/1 mask or average pooling CG is exact in two steps (A^T A has at most two eigenvalues).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from conejax.operators._base import LinearOperator, _Identity
from conejax.operators._image import Mask


def conjugate_gradient(A: LinearOperator, b, x0, alpha, n_iter: int):
  """``n_iter`` CG steps on (A^T A + alpha I) x = b from x0 (flat arrays), traced."""
  normal = lambda x: A.T.mv(A.mv(x)) + alpha * x
  tiny = jnp.finfo(b.dtype).tiny

  def step(_, state):
    x, r, p, rr = state
    q = normal(p)
    pq = jnp.vdot(p, q)
    a = jnp.where(pq > tiny, rr / jnp.where(pq > tiny, pq, 1), 0)
    x, r = x + a * p, r - a * q
    rr_new = jnp.vdot(r, r)
    p = r + jnp.where(rr > tiny, rr_new / jnp.where(rr > tiny, rr, 1), 0) * p
    return x, r, p, rr_new

  r = b - normal(x0)
  return lax.fori_loop(0, n_iter, step, (x0, r, r, jnp.vdot(r, r)))[0]


def per_pixel_gain(A: LinearOperator, dtype=jnp.float32):
  """The diagonal a (m,) of an operator that acts pixel by pixel (A u = a * u: a mask, the
  identity), or None for any other operator (its A^T A mixes pixels)."""
  if isinstance(A, Mask):
    return A.weights.astype(dtype)
  if isinstance(A, _Identity):
    return jnp.ones((A.in_size,), dtype)
  return None


def regularised_least_squares(A: LinearOperator, v, z, alpha, *, cg_iter: int = 20, x0=None):
  """argmin_u ||A u - v||^2 + alpha ||u - z||^2 for one flat signal (traced; vmap for a batch).

  Args:
    A: operator from (m,) to (k,).
    v: (k,) observation.
    z: (m,) the point the regulariser pulls towards.
    alpha: () >= 0 weight of the pull (0: the point of {A u = v} nearest z, reached by CG).
    cg_iter: conjugate-gradient steps for operators other than a mask or the identity.
    x0: (m,) CG's start; None is z.

  Returns:
    (m,) the solution: exact for a mask and the identity (per pixel, a_i v_i + alpha z_i over
    a_i^2 + alpha; z_i where both vanish); otherwise the iterate after exactly ``cg_iter``
    CG steps, an inexact step by design (plug-and-play splitting takes a few), with no
    convergence test: raise ``cg_iter`` for the solve itself.

  Raises:
    ValueError: if A is not an operator, v or z do not match its sizes, or alpha is not a
      scalar.
  """
  if not isinstance(A, LinearOperator):
    raise ValueError(f"A must be a conejax.operators operator; got {type(A).__name__}.")
  if jnp.shape(v) != (A.out_size,) or jnp.shape(z) != (A.in_size,):
    raise ValueError(f"v must have shape ({A.out_size},) (A's output) and z ({A.in_size},) "
                     f"(A's input), one flat signal (jax.vmap for a batch); got "
                     f"{jnp.shape(v)} and {jnp.shape(z)}.")
  if jnp.ndim(alpha) != 0:
    raise ValueError(f"alpha must be a scalar >= 0; got shape {jnp.shape(alpha)}.")
  a = per_pixel_gain(A, v.dtype)
  if a is not None:
    denominator = a * a + alpha
    safe = jnp.where(denominator > 0, denominator, 1)
    return jnp.where(denominator > 0, (a * v + alpha * z) / safe, z)
  b = A.T.mv(v) + alpha * z
  return conjugate_gradient(A, b, z if x0 is None else x0, alpha, cg_iter)
