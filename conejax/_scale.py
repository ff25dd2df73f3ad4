"""Scale-safe numerics: exact power-of-two rescaling before anything is squared.

float32 squares leave the float range for data beyond about 1e+-19 (sums of squares
underflow to 0 or overflow to inf). Every problem conejax solves is homogeneous in the data
and the dictionary, so the callers divide by a power of two close to the largest entry
(exact in binary floating point), solve at unit scale and multiply back: distances, codes,
predictions and NMF fits are then equivariant to the scale of the data and of W.

Non-finite inputs keep their scale at 1, so NaN and Inf propagate to the results.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def power_of_two(s):
  """2^(e - 1) for s = f 2^e, f in [0.5, 1), so that s / power_of_two(s) lies in [1, 2).

  1 where s is zero, negative, NaN or Inf. Never differentiated (a constant scale).
  """
  s = lax.stop_gradient(jnp.asarray(s))
  _, exponent = jnp.frexp(s)
  ok = jnp.isfinite(s) & (s > 0)
  return jnp.where(ok, jnp.ldexp(jnp.ones_like(s), exponent - 1), jnp.ones_like(s))


def scale_of(x, axis=-1, keepdims: bool = False):
  """The power of two nearest below max |x| along ``axis`` (1 for zero or non-finite)."""
  return power_of_two(jnp.max(jnp.abs(x), axis=axis, keepdims=keepdims))


def norm(x, axis: int = -1):
  """Euclidean norm along ``axis`` without under- or overflow of the squares.

  ||x|| = s ||x / s|| for s = ``scale_of(x)``. NaN in x gives NaN (never 0), and the
  gradient at x = 0 is zero rather than NaN (as optax's ``safe_norm``).
  """
  s = scale_of(x, axis=axis, keepdims=True)
  squared = jnp.sum((x / s) ** 2, axis=axis)
  zero = squared == 0
  return jnp.squeeze(s, axis) * jnp.where(zero, 0, jnp.sqrt(jnp.where(zero, 1, squared)))
