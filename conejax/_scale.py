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


def exponent_of(x, axis=-1, keepdims: bool = False):
  """The integer e with 2^e <= max |x| < 2^(e + 1) along ``axis``; 0 where that maximum is
  zero, NaN or Inf. Never differentiated (a constant scale).

  Combine scales by adding exponents and apply them with ``jnp.ldexp``: XLA rewrites
  a / b / c as a / (b c), whose product can underflow where the chain would not.
  """
  s = lax.stop_gradient(jnp.max(jnp.abs(x), axis=axis, keepdims=keepdims))
  _, exponent = jnp.frexp(s)
  return jnp.where(jnp.isfinite(s) & (s > 0), exponent - 1, 0)


def scale_of(x, axis=-1, keepdims: bool = False):
  """2^``exponent_of(x)``: the power of two nearest below max |x| (1 for zero or non-finite)."""
  x = jnp.asarray(x)
  return jnp.ldexp(jnp.ones((), x.dtype), exponent_of(x, axis, keepdims))


def norm(x, axis: int = -1):
  """Euclidean norm along ``axis`` without under- or overflow of the squares.

  ||x|| = s ||x / s|| for s = ``scale_of(x)``. NaN in x gives NaN (never 0), and the
  gradient at x = 0 is zero rather than NaN (as optax's ``safe_norm``).
  """
  s = scale_of(x, axis=axis, keepdims=True)
  squared = jnp.sum((x / s) ** 2, axis=axis)
  zero = squared == 0
  return jnp.squeeze(s, axis) * jnp.where(zero, 0, jnp.sqrt(jnp.where(zero, 1, squared)))
