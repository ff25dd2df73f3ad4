"""Loop helpers shared by the solver driver and the inverse problems: chunked maps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def in_chunks(fn, arrays, chunk: int):
  """fn over ``chunk`` rows of the (n, ...) ``arrays`` at a time (lax.map); rows padded, cut.

  One call when n <= chunk. ``arrays`` and fn's outputs are pytrees of (rows, ...) arrays.
  """
  n = jax.tree.leaves(arrays)[0].shape[0]
  if n <= chunk:
    return fn(arrays)
  n_chunks = -(-n // chunk)
  split = lambda x: jnp.pad(x, [(0, n_chunks * chunk - n)] + [(0, 0)] * (x.ndim - 1)).reshape(
      (n_chunks, chunk) + x.shape[1:])
  out = lax.map(fn, jax.tree.map(split, arrays))
  return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[:n], out)
