"""Loop drivers shared by the batched solvers (``_nnls``, ``_nnls_l1``, ``_inverse``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def until_converged(step, state, max_iter: int, tol: float):
  """Applies ``step`` until every ``state.error`` is <= tol or ``max_iter`` steps."""
  def cond(carry):
    it, state = carry
    return (it < max_iter) & jnp.any(state.error > tol)

  def body(carry):
    it, state = carry
    return it + 1, step(state)

  return lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state))[1]


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
