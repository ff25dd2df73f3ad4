"""Refinements of a cone estimate by its own observation: blend, keep, fill.

A cone's estimate u = W h* of a signal seen as v = A u + noise lies on the cone, and so it
loses whatever of the signal the cone cannot express, even where v itself is trustworthy.
A refinement moves the estimate back towards the observation, each for one kind of
degradation (samples are rows: V is (N, k), U is (N, m) or (N, K, m) for K cones):

- ``Blend(alpha)``, Gaussian noise: the MAP estimate under the cone-likelihood prior
  exp(-lam D(u)^2) given the code h*,

      u = argmin_u alpha ||A u - v||^2 + (1 - alpha) ||u - W h*||^2,

  alpha = 1 / (1 + 2 sigma^2 lam) in [0, 1] (0 keeps W h*, 1 fits the data alone). For the
  identity it is u = alpha v + (1 - alpha) W h*; for a mask the same on the observed pixels
  and W h* elsewhere; for other operators the normal equations are solved by conjugate
  gradients from W h* (``conejax.operators.regularised_least_squares``). For the identity
  and a 0/1 mask minimising over u and h jointly gives the projection's own h* (with the
  penalty rescaled), so the blend is the joint MAP; for other operators it is the MAP u
  given h*.
- ``Keep(threshold)``, impulsive noise (salt and pepper), after the l1 fit: an observed
  pixel the fit explains to within ``threshold`` (|v_i - a_i u_i| < threshold, in the units
  of v) is an exact observation and is kept (v_i / a_i); the others, the outliers, keep the
  cone's value. For operators that act pixel by pixel (the identity, a mask).
- ``Fill(width, image_shape)``, missing pixels of noiseless images: the observed pixels are
  kept and the cone's fill of the others is corrected by its residual r = v / a - u, known on
  the observed pixels and slowly varying in space, interpolated into the holes by
  normalised convolution, G(r) / max(G(o), 1e-3), o the observed pixels and G a Gaussian of
  std ``width`` pixels (scipy.ndimage.gaussian_filter's kernel: radius int(4 width + 0.5),
  reflected borders; width 0 keeps the observed pixels and nothing more). The filled values
  are clipped at 0 (``nonnegative=True``: the cone's signals are non-negative). For a mask
  (or the identity, where nothing is missing and it returns v).

``refine(refinement, V, U, A)`` applies one to a batch (so one solve serves a whole grid of
refinement parameters); ``reconstruct(..., refine=)`` and ``restore(..., refine=)`` apply one
to their estimate.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from conejax import _checks
from conejax.operators import (LinearOperator, blur, identity, per_pixel_gain,
                               regularised_least_squares)

_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default radius, in standard deviations
_FLOOR = 1e-3    # the smallest observed weight Fill divides by


def _check_fraction(x, name: str) -> float:
  if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= 1:
    raise ValueError(f"{name} must be a number in [0, 1]; got {x!r}.")
  return float(x)


def _check_nonnegative_number(x, name: str, fix: str) -> float:
  if isinstance(x, bool) or not isinstance(x, (int, float)) or not (math.isfinite(x) and x >= 0):
    raise ValueError(f"{name} must be a finite number >= 0; got {x!r}. {fix}")
  return float(x)


@dataclasses.dataclass(frozen=True)
class Blend:
  """MAP blend of the cone estimate with the data (Gaussian noise).

  Attributes:
    alpha: weight of the data in [0, 1]: u = argmin alpha ||A u - v||^2 +
      (1 - alpha) ||u - W h*||^2; alpha = 1 / (1 + 2 sigma^2 lam) for noise sigma and the
      prior exp(-lam D(u)^2). 0 returns W h*.
    cg_iter: conjugate-gradient steps for operators other than a mask or the identity.
  """
  alpha: float
  cg_iter: int = 50
  traced = "alpha"  # the field passed to the compiled kernel as an array

  def __post_init__(self):
    _check_fraction(self.alpha, "Blend.alpha")
    _checks.check_positive_int(self.cg_iter, "Blend.cg_iter")


@dataclasses.dataclass(frozen=True)
class Keep:
  """Keeps the observed pixels the fit explains to within ``threshold`` (impulsive noise).

  Attributes:
    threshold: >= 0, in the units of v: observed pixels with |v_i - a_i u_i| < threshold
      are kept, the others take the cone's value (0 keeps none).
  """
  threshold: float
  traced = "threshold"

  def __post_init__(self):
    _check_nonnegative_number(self.threshold, "Keep.threshold",
                              "It is the largest misfit of a kept pixel, in v's units.")


@dataclasses.dataclass(frozen=True)
class Fill:
  """Keeps the observed pixels and corrects the fill of the others by the residual.

  Attributes:
    width: >= 0, std in pixels of the Gaussian that interpolates the residual into the
      holes (0: the cone's fill, uncorrected).
    image_shape: (H, W) of the flat signals (row-major), H W = m.
    nonnegative: clip the filled pixels at 0.
  """
  width: float
  image_shape: tuple[int, int]
  nonnegative: bool = True
  traced = None  # the width fixes the kernel's size: static

  def __post_init__(self):
    _check_nonnegative_number(self.width, "Fill.width", "It is a std in pixels.")
    shape = tuple(self.image_shape) if isinstance(self.image_shape, (tuple, list)) else ()
    if len(shape) != 2 or not all(isinstance(s, int) and s > 0 for s in shape):
      raise ValueError(f"Fill.image_shape must be (H, W), two positive ints; got "
                       f"{self.image_shape!r}.")
    object.__setattr__(self, "image_shape", shape)
    if not isinstance(self.nonnegative, bool):
      raise ValueError(f"Fill.nonnegative must be True or False; got {self.nonnegative!r}.")


REFINEMENTS = (Blend, Keep, Fill)


def check_refinement(refinement, A: LinearOperator, m: int) -> None:
  """Raises a ValueError naming the fix if ``refinement`` cannot refine estimates of size m
  seen through A (one operator; checked on its type, so also under jit)."""
  if not isinstance(refinement, REFINEMENTS):
    raise ValueError(f"refine must be conejax.Blend, conejax.Keep or conejax.Fill (or None); "
                     f"got {type(refinement).__name__}.")
  if isinstance(refinement, (Keep, Fill)) and per_pixel_gain(A) is None:
    raise ValueError(f"{type(refinement).__name__} needs an operator that acts pixel by pixel "
                     f"(the identity or a mask), whose observations are pixels; got "
                     f"{type(A).__name__}. Use conejax.Blend for other operators.")
  if isinstance(refinement, Fill) and math.prod(refinement.image_shape) != m:
    raise ValueError(f"Fill.image_shape {refinement.image_shape} has "
                     f"{math.prod(refinement.image_shape)} pixels, but the signals have {m}.")


def _gaussian_blur(width: float, image_shape) -> LinearOperator:
  """scipy.ndimage.gaussian_filter's Gaussian of std ``width`` (radius int(4 width + 0.5),
  reflected borders) as a conejax blur operator on flat (H W,) images."""
  radius = int(_TRUNCATE * width + 0.5)
  k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / width) ** 2)
  k /= k.sum()
  return blur(np.outer(k, k), image_shape, boundary="reflect")


def _refine_one(refinement, A, v, u, parameter):
  """The refinement of one estimate u (m,) of the observation v (k,) by A."""
  if isinstance(refinement, Blend):
    alpha = parameter
    beta = (1 - alpha) / jnp.where(alpha > 0, alpha, 1)
    out = regularised_least_squares(A, v, u, beta, cg_iter=refinement.cg_iter)
    return jnp.where(alpha > 0, out, u)
  a = per_pixel_gain(A, u.dtype)
  observed = a > 0
  exact = v / jnp.where(observed, a, 1)  # the observed pixels, in the signal's units
  if isinstance(refinement, Keep):
    explained = observed & (jnp.abs(v - a * u) < parameter)
    return jnp.where(explained, exact, u)
  fill = u
  if refinement.width > 0:
    G = _gaussian_blur(refinement.width, refinement.image_shape)
    residual = jnp.where(observed, exact - u, 0)
    fill = u + G.mv(residual) / jnp.maximum(G.mv(observed.astype(u.dtype)), _FLOOR)
  fill = jnp.maximum(fill, 0) if refinement.nonnegative else fill
  return jnp.where(observed, exact, fill)


@functools.partial(jax.jit, static_argnames=("refinement", "per_sample", "stacked"))
def _refine(refinement, V, U, A, parameter, *, per_sample, stacked):
  one = lambda A, v, u: _refine_one(refinement, A, v, u, parameter)
  if stacked:  # U (N, K, m): every cone's estimate against the same observation
    one = jax.vmap(one, in_axes=(None, None, 0))
  return jax.vmap(one, in_axes=(0 if per_sample else None, 0, 0))(A, V, U)


def apply_refinement(refinement, V, U, A, *, per_sample: bool):
  """``refine`` on validated arrays: V (N, k), U (N, m) or (N, K, m), A one operator or
  (``per_sample``) a batch of N; no checks of shapes."""
  # The parameter is traced (a grid of alphas or thresholds compiles once); the rest of the
  # refinement, with the parameter zeroed, is the static part.
  name = refinement.traced
  parameter = 0.0 if name is None else getattr(refinement, name)
  static = refinement if name is None else dataclasses.replace(refinement, **{name: 0.0})
  return _refine(static, V, U, A, jnp.asarray(parameter, U.dtype), per_sample=per_sample,
                 stacked=U.ndim == 3)


def refine(refinement, V, U, A: LinearOperator | None = None, *,
           per_sample_operator: bool = False) -> jax.Array:
  """Refines cone estimates U of signals seen as V = A U + noise (see the module docstring).

  Args:
    refinement: ``conejax.Blend``, ``conejax.Keep`` or ``conejax.Fill``.
    V: (k,) or (N, k) observations, samples as rows.
    U: (m,), (N, m) or (N, K, m) estimates (e.g. ``reconstruct(...).u``; K cones' estimates
      of the same observation with ``select="each"``).
    A: the operator from (m,) to (k,); None is the identity. ``Keep`` and ``Fill`` need one
      that acts pixel by pixel (the identity or a mask).
    per_sample_operator: whether A holds one operator per sample (a leading axis N on its
      arrays, e.g. ``jax.vmap(operators.mask)(M)``).

  Returns:
    The refined estimates, of U's shape and dtype.

  Raises:
    ValueError: for an unknown refinement, an operator it does not apply to, shapes that
      disagree, or non-finite V or U.

  Example:
    >>> import jax.numpy as jnp, conejax
    >>> v, u = jnp.array([1.0, 0.0]), jnp.array([0.5, 0.5])
    >>> conejax.refine(conejax.Blend(0.5), v, u)
    Array([0.75, 0.25], dtype=float32)
  """
  U = _checks.as_float_array(U, "U")
  V = _checks.as_float_array(V, "V")
  _checks.check_finite(U, "U")
  _checks.check_finite(V, "V")
  m = U.shape[-1]
  A = identity(m) if A is None else A
  if not isinstance(A, LinearOperator):
    raise ValueError(f"A must be a conejax.operators operator; got {type(A).__name__}.")
  if A.in_size != m:
    raise ValueError(f"A maps signals of size {A.in_size}, but U's signals have size {m}.")
  single = V.ndim == 1
  V, U = (V[None], U[None]) if single else (V, U)
  if V.ndim != 2 or V.shape[1] != A.out_size:
    raise ValueError(f"V must have shape (N, {A.out_size}) (A's output size), samples as rows; "
                     f"got {tuple(V.shape)}.")
  if U.ndim not in (2, 3) or U.shape[0] != V.shape[0]:
    raise ValueError(f"U must have shape ({V.shape[0]}, {m}) or ({V.shape[0]}, K, {m}), one "
                     f"estimate (or K) per observation; got {tuple(U.shape)}.")
  if per_sample_operator:
    sizes = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree.leaves(A)}
    if single:
      A = jax.tree.map(lambda x: x[None], A)
    elif sizes != {V.shape[0]}:
      raise ValueError(f"per_sample_operator=True needs every array of A to have a leading "
                       f"axis of N = {V.shape[0]} samples; got leading sizes {sizes}.")
  one = jax.tree.map(lambda x: x[0], A) if per_sample_operator else A
  check_refinement(refinement, one, m)
  dtype = jnp.result_type(U, V)
  out = apply_refinement(refinement, V.astype(dtype), U.astype(dtype), A,
                         per_sample=bool(per_sample_operator))
  return out[0] if single else out
