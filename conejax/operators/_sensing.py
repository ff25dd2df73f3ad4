"""Sensing operators: random Gaussian measurements and row subsampling.

Both map a flat signal of shape (m,) to k measurements of shape (k,).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from conejax import _checks
from conejax.operators._base import LinearOperator
from conejax.operators._base import matrix
from conejax.operators._base import pytree_dataclass
from conejax.operators._base import static_field


@pytree_dataclass
class Subsample(LinearOperator):
  """u -> u[indices]; the adjoint scatters back into zeros (adding up repeated indices).

  ``indices`` is an int32 data leaf, not static metadata, so changing the indices does not
  recompile and a batch of index sets can be vmapped like a batch of masks.
  """
  indices: jax.Array
  in_size: int = static_field()
  out_size: int = static_field()

  def _mv(self, u):
    return u[self.indices]


def gaussian_sensing(key: jax.Array, k: int, m: int, *, dtype=float) -> LinearOperator:
  """A dense k x m sensing matrix with i.i.d. N(0, 1/k) entries.

  With this scaling E[||A x||^2] = ||x||^2 for every x, and each column has unit norm in
  expectation.

  Args:
    key: PRNG key, e.g. ``jax.random.key(0)``.
    k: number of measurements, >= 1.
    m: signal length, >= 1.
    dtype: floating dtype of the stored matrix; ``mv`` computes in the input's dtype.

  Returns:
    The operator from (m,) to (k,); ``materialise`` gives its matrix.

  Raises:
    ValueError: if k or m is not a positive integer.

  Example:
    >>> A = gaussian_sensing(jax.random.key(0), 20, 784)
    >>> (A.in_size, A.out_size)
    (784, 20)
  """
  k = _checks.check_positive_int(k, "k")
  m = _checks.check_positive_int(m, "m")
  M = jax.random.normal(key, (k, m), dtype) / math.sqrt(k)
  return matrix(M)


def subsample(indices: ArrayLike, m: int) -> LinearOperator:
  """Keeps the entries ``indices`` of a signal of length m, in that order.

  Args:
    indices: (k,) integer positions in [0, m); repeats are allowed.
    m: signal length.

  Returns:
    The operator from (m,) to (k,). Its adjoint puts each measurement back at its position
    in a zero signal of length m.

  Raises:
    ValueError: if indices is not a non-empty 1-D integer array within [0, m).

  Example:
    >>> subsample(jnp.array([2, 0]), 3).mv(jnp.array([4.0, 5.0, 6.0])).tolist()
    [6.0, 4.0]
  """
  m = _checks.check_positive_int(m, "m")
  indices = jnp.asarray(indices)
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise ValueError(f"indices must be integers; got dtype {indices.dtype}. For a boolean "
                     "selection pass jnp.flatnonzero(selection), or use mask(selection).")
  _checks.check_ndim(indices, "indices", (1,), "(k,)")
  if indices.shape[0] == 0:
    raise ValueError("indices is empty; subsample needs at least one position to keep.")
  if _checks.is_concrete(indices):
    low, high = int(np.min(np.asarray(indices))), int(np.max(np.asarray(indices)))
    if low < 0 or high >= m:
      raise ValueError(f"indices must lie in [0, {m}) for signals of length m={m}; got values "
                       f"from {low} to {high}. Negative indices are not wrapped: use i % m.")
  return Subsample(indices.astype(jnp.int32), in_size=m, out_size=indices.shape[0])
