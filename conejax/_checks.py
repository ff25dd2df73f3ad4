"""Validation at the public boundary.

Shape, rank and dtype checks are static and run even under ``jit``. Value checks (sign,
finiteness, non-negative penalties) need concrete arrays: they run when the caller passes
concrete values and are skipped for tracers, so the public functions stay usable inside
``jit``, ``vmap`` and ``grad``. Every error is a ``ValueError`` naming the fix.
"""

from __future__ import annotations

import zipfile

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
  """Whether x is a concrete value (not a tracer under jit, vmap or grad).

  Public API only (no ``jax.core.Tracer``, whose module JAX is retiring): a traced
  ``jax.Array`` raises ``jax.errors.ConcretizationTypeError`` when asked for its placement.
  """
  if not isinstance(x, jax.Array):
    return True
  try:
    x.is_fully_addressable  # noqa: B018  (only the attribute access matters)
  except jax.errors.ConcretizationTypeError:
    return False
  return True


_is_concrete = is_concrete


def as_float_array(x, name: str) -> jax.Array:
  """Returns ``x`` as a floating JAX array; rejects integer, boolean and complex data.

  Half precision (float16, bfloat16) is promoted to float32: the solvers' factorisations
  (LAPACK) and sums of squares need at least single precision.
  """
  dtype = getattr(x, "dtype", None)
  if dtype is None:
    try:
      x = np.asarray(x)
    except ValueError as error:  # ragged nested lists
      raise ValueError(f"{name} could not be read as an array ({error}); pass a rectangular "
                       "numeric array.") from error
    dtype = x.dtype
    if np.issubdtype(dtype, np.integer) and x.ndim == 0:
      return jnp.asarray(x, dtype=jnp.result_type(float))
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
        f"{name} has dtype {dtype}; conejax needs real floating-point data. "
        f"Convert it first, e.g. {name}.astype(np.float32) (and scale uint8 images by 1/255).")
  if jnp.finfo(dtype).bits < 32:
    return jnp.asarray(x).astype(jnp.float32)
  return jnp.asarray(x)


def require_concrete(function: str, fix: str, **arrays) -> None:
  """Raises ``TypeError`` if any of ``arrays`` is traced: ``function`` runs Python-side.

  For drivers whose loops, label handling or numpy results need concrete values, so that
  a call inside ``jit``, ``vmap`` or ``grad`` names its alternative instead of failing
  deep inside JAX with a ``TracerArrayConversionError``.
  """
  traced = [name for name, x in arrays.items()
            if any(not is_concrete(leaf) for leaf in jax.tree_util.tree_leaves(x))]
  if traced:
    raise TypeError(f"{function} got traced {', '.join(traced)} (it was called inside jit, "
                    f"vmap or grad); it needs concrete arrays. {fix}")


def not_differentiable(fn, message: str):
  """``fn`` with reverse-mode differentiation replaced by a ``TypeError`` naming the fix.

  For routes whose loops cannot be reverse-differentiated (``lax.while_loop``): without
  this, ``grad`` fails inside JAX with "Reverse-mode differentiation does not work for
  lax.while_loop". The forward values are unchanged.
  """
  @jax.custom_vjp
  def wrapped(*args):
    return fn(*args)

  def forward(*args):
    return fn(*args), None

  def backward(_, cotangent):
    raise TypeError(message)

  wrapped.defvjp(forward, backward)
  return wrapped


def check_ndim(x: jax.Array, name: str, allowed: tuple[int, ...], shape_doc: str) -> None:
  if x.ndim not in allowed:
    raise ValueError(f"{name} must have shape {shape_doc}; got shape {tuple(x.shape)}.")


def check_finite(x, name: str) -> None:
  # numpy, not jnp: inside a jit trace even concrete arrays would become tracers.
  if _is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
    raise ValueError(f"{name} contains NaN or Inf values; remove or impute them before fitting.")


def check_nonnegative(x, name: str) -> None:
  if _is_concrete(x) and np.any(np.asarray(x) < 0):
    raise ValueError(
        f"{name} has negative entries (min {float(np.min(np.asarray(x))):.3g}); non-negative factorisation "
        f"needs data >= 0. Shift or clip it, e.g. np.clip({name}, 0, None).")


def check_penalty(mu, name: str) -> jax.Array:
  if jnp.ndim(mu) != 0:
    raise ValueError(f"{name} must be a scalar; got shape {tuple(jnp.shape(mu))}.")
  if _is_concrete(mu) and not (np.isfinite(np.asarray(mu)) and float(mu) >= 0):
    raise ValueError(f"{name} must be a finite number >= 0; got {float(mu)}.")
  return jnp.asarray(mu)


def check_positive_int(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer; got {value!r}.")
  return int(value)


def check_tol(tol, name: str = "tol") -> float:
  tol = float(tol)
  if not (np.isfinite(tol) and tol >= 0):
    raise ValueError(f"{name} must be a finite number >= 0; got {tol}.")
  return tol


def check_labels(labels, name: str, fix: str) -> np.ndarray:
  """``labels`` as a 1-D numpy array of numbers or strings, none of them NaN.

  Raises:
    ValueError: naming ``name`` and ``fix``, for labels that are not 1-D, mix strings with
      numbers, are objects (e.g. None) or hold NaN.
  """
  values = list(labels) if isinstance(labels, (list, tuple)) else None
  if values is not None and len({isinstance(v, str) for v in values}) > 1:
    raise ValueError(f"{name} mixes strings and numbers; {fix}.")
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"{name} must be a 1-D array of labels; got shape {labels.shape}.")
  if labels.dtype.kind not in "biufUS":
    raise ValueError(f"{name} has dtype {labels.dtype}; labels must be numbers or strings "
                     f"(not objects or None); {fix}.")
  if labels.dtype.kind in "fc" and not np.all(np.isfinite(labels)):
    raise ValueError(f"{name} contains NaN or Inf labels; drop those samples or give them a "
                     f"class; {fix}.")
  return labels


def check_choice(value, name: str, choices: tuple[str, ...]) -> str:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}; got {value!r}.")
  return value


def _is_zipfile(path) -> bool:
  """zipfile.is_zipfile for a path or a file object (whose position is restored)."""
  if not hasattr(path, "read"):
    return zipfile.is_zipfile(path)
  position = path.tell()
  try:
    return zipfile.is_zipfile(path)
  finally:
    path.seek(position)


def read_npz(path, keys: tuple[str, ...], kind: str, fix: str) -> dict:
  """Reads ``keys`` from an .npz file (a path or a binary file object) without pickle.

  Raises:
    ValueError: naming ``path`` and ``fix``, if the file is truncated, not an .npz, has a
      corrupted member (a bad CRC, compressed stream or .npy header), needs pickle, or
      lacks one of ``keys`` (then it is not ``kind``). Every low-level decoding error
      (zlib, zipfile, numpy's format parser) becomes this ``ValueError``, chained.
  """
  name = str(getattr(path, "name", path))
  if not _is_zipfile(path):
    raise ValueError(f"{name!r} is truncated or not an .npz file; {fix}.")
  try:
    with np.load(path, allow_pickle=False) as data:
      fields = {key: data[key] for key in keys if key in data.files}
  except ValueError as error:
    if "allow_pickle" in str(error):
      raise ValueError(f"{name!r} could not be read without pickle ({error}); "
                       f"{fix}.") from error
    raise ValueError(f"{name!r} has a corrupted member ({error}); {fix}.") from error
  except Exception as error:  # zlib.error, BadZipFile, EOFError, struct.error, ...
    raise ValueError(f"{name!r} is truncated or corrupted ({type(error).__name__}: "
                     f"{error}); {fix}.") from error
  broken = [key for key, value in fields.items() if not isinstance(value, np.ndarray)]
  if broken:
    raise ValueError(f"{name!r} has a corrupted member: {broken} are not .npy arrays; {fix}.")
  missing = [key for key in keys if key not in fields]
  if missing:
    raise ValueError(f"{name!r} is not {kind}: fields {missing} are missing; {fix}.")
  return fields
