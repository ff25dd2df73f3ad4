"""Matrix-free linear operators: the base class, algebra, dense matrices and helpers.

An operator A maps a flat signal u of shape (in_size,) to A u of shape (out_size,). It is a
frozen dataclass registered as a pytree: arrays (mask, kernel, matrix, scalar) are data
leaves and sizes, shapes and options are static, so operators cross ``jit``, are batched by
``vmap`` and can be differentiated. ``A.T`` is the adjoint, obtained from
``jax.linear_transpose`` unless a subclass knows better; ``A @ B`` applies B then A.
"""

from __future__ import annotations

import dataclasses
import functools
import operator

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from conejax import _checks

_HIGHEST = lax.Precision.HIGHEST


def static_field():
  """A dataclass field that is pytree metadata (hashable, part of the ``jit`` cache key)."""
  return dataclasses.field(metadata=dict(static=True))


def pytree_dataclass(cls):
  """Makes ``cls`` a frozen dataclass registered as a pytree (eq by identity, arrays inside)."""
  return jax.tree_util.register_dataclass(dataclasses.dataclass(frozen=True, eq=False)(cls))


def float_parameter(x: ArrayLike, name: str) -> jax.Array:
  """``x`` as a real floating array; booleans and integers become the default float."""
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    raise ValueError(f"{name} has complex dtype {x.dtype}; operators are real. Pass its real part.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  _checks.check_finite(x, name)
  return x


class LinearOperator:
  """A linear map from signals of shape (in_size,) to signals of shape (out_size,).

  Subclasses provide ``in_size`` and ``out_size`` (static ints, as fields or properties) and
  ``_mv``; ``mv`` checks the shape and makes integer input floating first. The output has the
  dtype of the input: data fields are cast to it.

  Attributes:
    in_size: length m of the input signal.
    out_size: length k of the output signal.
  """
  in_size: int
  out_size: int
  __array_ufunc__ = None  # numpy arrays defer to our operators, so ``array * A`` raises

  def mv(self, u: ArrayLike) -> jax.Array:
    """Returns A u, of shape (out_size,), for u of shape (in_size,).

    Raises:
      ValueError: if u does not have shape (in_size,); batches go through ``apply``.
    """
    u = jnp.asarray(u)
    if u.shape != (self.in_size,):
      raise ValueError(
          f"{type(self).__name__}.mv expects a signal of shape ({self.in_size},); got shape "
          f"{u.shape}. Flatten images row-major, and use conejax.operators.apply(A, U) for a "
          f"batch U of shape (N, {self.in_size}).")
    if not jnp.issubdtype(u.dtype, jnp.inexact):
      u = u.astype(jnp.result_type(float))
    return self._mv(u)

  def __call__(self, u: ArrayLike) -> jax.Array:
    return self.mv(u)

  def _mv(self, u: jax.Array) -> jax.Array:
    raise NotImplementedError

  def transpose(self) -> LinearOperator:
    """The adjoint A^T, from (out_size,) to (in_size,), via ``jax.linear_transpose``."""
    return _Transposed(self)

  @property
  def T(self) -> LinearOperator:
    """The adjoint, ``self.transpose()``."""
    return self.transpose()

  def __matmul__(self, other):
    if not isinstance(other, LinearOperator):
      return NotImplemented
    if other.out_size != self.in_size:
      raise ValueError(
          f"Cannot compose A @ B: B gives signals of size {other.out_size} but A expects "
          f"size {self.in_size}. A @ B applies B first, so B.out_size must equal A.in_size.")
    return _Composed(self, other)

  def __add__(self, other):
    if not isinstance(other, LinearOperator):
      return NotImplemented
    if (self.in_size, self.out_size) != (other.in_size, other.out_size):
      raise ValueError(
          f"Cannot add operators of sizes {self.in_size} -> {self.out_size} and "
          f"{other.in_size} -> {other.out_size}; both must map the same sizes.")
    return _Sum(self, other)

  def __sub__(self, other):
    if not isinstance(other, LinearOperator):
      return NotImplemented
    return self + (-other)

  def __mul__(self, scalar):
    if isinstance(scalar, LinearOperator):
      return NotImplemented
    scalar = jnp.asarray(scalar)
    if scalar.ndim != 0:
      raise ValueError(
          f"An operator can only be multiplied by a scalar; got shape {scalar.shape}. "
          "For per-entry weights compose with a mask: mask(weights) @ A.")
    return _Scaled(self, scalar)

  __rmul__ = __mul__

  def __neg__(self):
    return -1.0 * self


@pytree_dataclass
class _Transposed(LinearOperator):
  """The adjoint of ``op``, evaluated by ``jax.linear_transpose`` of ``op.mv``."""
  op: LinearOperator

  in_size = property(lambda self: self.op.out_size)
  out_size = property(lambda self: self.op.in_size)

  def _mv(self, u):
    primal = jax.ShapeDtypeStruct((self.op.in_size,), u.dtype)
    return jax.linear_transpose(self.op.mv, primal)(u)[0]

  def transpose(self):
    return self.op


@pytree_dataclass
class _Composed(LinearOperator):
  """``outer @ inner``: applies ``inner`` then ``outer``."""
  outer: LinearOperator
  inner: LinearOperator

  in_size = property(lambda self: self.inner.in_size)
  out_size = property(lambda self: self.outer.out_size)

  def _mv(self, u):
    return self.outer.mv(self.inner.mv(u))

  def transpose(self):
    return _Composed(self.inner.T, self.outer.T)


@pytree_dataclass
class _Sum(LinearOperator):
  left: LinearOperator
  right: LinearOperator

  in_size = property(lambda self: self.left.in_size)
  out_size = property(lambda self: self.left.out_size)

  def _mv(self, u):
    return self.left.mv(u) + self.right.mv(u)

  def transpose(self):
    return _Sum(self.left.T, self.right.T)


@pytree_dataclass
class _Scaled(LinearOperator):
  """``scalar * op``; the scalar is a traced leaf, so it can be swept or differentiated."""
  op: LinearOperator
  scalar: jax.Array

  in_size = property(lambda self: self.op.in_size)
  out_size = property(lambda self: self.op.out_size)

  def _mv(self, u):
    return self.scalar.astype(u.dtype) * self.op.mv(u)

  def transpose(self):
    return _Scaled(self.op.T, self.scalar)


@pytree_dataclass
class _Identity(LinearOperator):
  size: int = static_field()

  in_size = property(lambda self: self.size)
  out_size = property(lambda self: self.size)

  def _mv(self, u):
    return u

  def transpose(self):
    return self


@pytree_dataclass
class _Matrix(LinearOperator):
  """A dense (out_size, in_size) matrix; its adjoint comes from ``jax.linear_transpose``."""
  matrix: jax.Array
  in_size: int = static_field()
  out_size: int = static_field()

  def _mv(self, u):
    return jnp.matmul(self.matrix.astype(u.dtype), u, precision=_HIGHEST)


def identity(m: int) -> LinearOperator:
  """The identity on signals of shape (m,)."""
  return _Identity(_checks.check_positive_int(m, "m"))


def matrix(M: ArrayLike) -> LinearOperator:
  """A dense matrix M of shape (k, m) as an operator from (m,) to (k,).

  ``compose(A, matrix(W))`` is the product A W of an operator and a dictionary W (m, d),
  applied without forming it: its ``mv`` is A (W h) and its transpose W^T (A^T r).

  Raises:
    ValueError: if M is not 2-D or not finite.
  """
  M = float_parameter(M, "M")
  _checks.check_ndim(M, "M", (2,), "(k, m)")
  return _Matrix(M, in_size=M.shape[1], out_size=M.shape[0])


def compose(*ops: LinearOperator) -> LinearOperator:
  """``compose(A, B, C) = A @ B @ C``: applies C first, then B, then A.

  Raises:
    ValueError: if no operator is given or the sizes do not chain.
  """
  if not ops or not all(isinstance(op, LinearOperator) for op in ops):
    raise ValueError(f"compose needs one or more LinearOperators; got {ops!r}.")
  return functools.reduce(operator.matmul, ops)


def materialise(A: LinearOperator, *, dtype=None) -> jax.Array:
  """The dense (out_size, in_size) matrix of A, one ``mv`` per column (tests and notebooks).

  Args:
    A: the operator.
    dtype: of the identity fed to ``mv``; the default float when None.

  Returns:
    (out_size, in_size) array whose column j is A e_j.
  """
  eye = jnp.eye(A.in_size, dtype=jnp.result_type(float) if dtype is None else dtype)
  return jax.vmap(A.mv, out_axes=1)(eye)


def is_single(A: LinearOperator, dtype=jnp.float32) -> bool:
  """Whether A is one operator, rather than a batch of per-sample operators (e.g. from
  ``jax.vmap(operators.mask)(masks)``): its ``mv`` maps one signal (in_size,) to
  (out_size,); a batch's leaves broadcast to another shape or fail to apply.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from conejax import operators
    >>> operators.is_single(operators.mask(jnp.ones(4)))
    True
    >>> operators.is_single(jax.vmap(operators.mask)(jnp.ones((3, 4))))
    False
  """
  try:
    out = jax.eval_shape(A.mv, jax.ShapeDtypeStruct((A.in_size,), dtype))
  except Exception:  # a batch of operators cannot apply to a single signal
    return False
  return out.shape == (A.out_size,)


def apply(A: LinearOperator, U: ArrayLike) -> jax.Array:
  """Applies A to every row of U (samples are rows).

  Args:
    A: operator from (m,) to (k,).
    U: (..., m) signals.

  Returns:
    (..., k) array whose rows are A u.

  Raises:
    ValueError: if the last axis of U is not A.in_size.
  """
  U = jnp.asarray(U)
  if U.ndim == 0 or U.shape[-1] != A.in_size:
    raise ValueError(
        f"apply expects signals as rows of shape (..., {A.in_size}); got shape {U.shape}. "
        "Flatten each image row-major into one row.")
  rows = jax.vmap(A.mv)(U.reshape(-1, A.in_size))
  return rows.reshape(*U.shape[:-1], A.out_size)


def apply_to_dictionary(A: LinearOperator, W: ArrayLike) -> jax.Array:
  """The product A W for a dictionary W of shape (m, d), column by column, never forming A.

  Args:
    A: operator from (m,) to (k,).
    W: (m, d) dictionary whose columns are atoms.

  Returns:
    (k, d) array A W, the atoms as the operator sees them.

  Raises:
    ValueError: if W is not 2-D with A.in_size rows.
  """
  W = jnp.asarray(W)
  if W.ndim != 2 or W.shape[0] != A.in_size:
    raise ValueError(
        f"apply_to_dictionary expects W of shape ({A.in_size}, d) with atoms as columns; "
        f"got shape {W.shape}. Pass W, not W.T, for a dictionary stored as rows.")
  return jax.vmap(A.mv, in_axes=1, out_axes=1)(W)
