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
  """Whether x is a concrete value (not a tracer under jit, vmap or grad)."""
  return not isinstance(x, jax.core.Tracer)


_is_concrete = is_concrete


def as_float_array(x, name: str) -> jax.Array:
  """Returns ``x`` as a floating JAX array; rejects integer, boolean and complex data."""
  dtype = getattr(x, "dtype", None)
  if dtype is None:
    x = np.asarray(x)
    dtype = x.dtype
    if np.issubdtype(dtype, np.integer) and x.ndim == 0:
      return jnp.asarray(x, dtype=jnp.result_type(float))
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
        f"{name} has dtype {dtype}; conejax needs real floating-point data. "
        f"Convert it first, e.g. {name}.astype(np.float32) (and scale uint8 images by 1/255).")
  return jnp.asarray(x)


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


def check_choice(value, name: str, choices: tuple[str, ...]) -> str:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}; got {value!r}.")
  return value


def read_npz(path, keys: tuple[str, ...], kind: str, fix: str) -> dict:
  """Reads ``keys`` from an .npz file without pickle.

  Raises:
    ValueError: naming ``path`` and ``fix``, if the file is truncated, not an .npz, needs
      pickle, or lacks one of ``keys`` (then it is not ``kind``).
  """
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{str(path)!r} is truncated or not an .npz file; {fix}.")
  try:
    with np.load(path, allow_pickle=False) as data:
      fields = {key: data[key] for key in keys if key in data.files}
  except (zipfile.BadZipFile, EOFError, OSError) as error:
    raise ValueError(f"{str(path)!r} is truncated or not an .npz file ({error}); {fix}.") from error
  except ValueError as error:
    raise ValueError(f"{str(path)!r} could not be read without pickle ({error}); {fix}.") from error
  missing = [key for key in keys if key not in fields]
  if missing:
    raise ValueError(f"{str(path)!r} is not {kind}: fields {missing} are missing; {fix}.")
  return fields
