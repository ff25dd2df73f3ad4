"""Patches of images: extraction of all (or strided) p x q patches and overlap averaging.

Images are (N, H, W) batches (or one (H, W) image); a patch is flattened row-major to a
row of length p q, so the patches of a batch are (N, n_patches, p q), samples as rows, ready
for ``conejax.codes`` or ``conejax.project``. Patches are ordered by their top-left corner,
row-major, as scikit-learn's ``extract_patches_2d`` orders them.

With ``stride`` s the top-left corners are 0, s, 2 s, ... along each axis, and the last
possible corner (H - p, resp. W - q) is added when the stride misses it, so that every pixel
lies in at least one patch and reassembly is defined everywhere (a stride may not exceed the
patch side). ``stride=1`` gives all
(H - p + 1)(W - q + 1) patches.

Extraction is one gather with static indices (no Python loop over patches); it is linear,
and its transpose, overlap-add, is the matching scatter-add. ``reassemble_patches`` divides
overlap-add by the number of patches covering each pixel: the average of every patch's
value at that pixel (``reconstruct_from_patches_2d`` for stride 1). The same map is the
operator ``conejax.operators.patches``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from conejax import _checks


def _pair(value, name: str) -> tuple[int, int]:
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    value = (value, value)
  if not isinstance(value, (tuple, list)) or len(value) != 2:
    raise ValueError(f"{name} must be an int or a pair of ints (rows, columns); got {value!r}.")
  return tuple(_checks.check_positive_int(v, f"each side of {name}") for v in value)


def corners(size: int, patch: int, stride: int) -> np.ndarray:
  """Top-left corners along one axis: 0, stride, ..., and size - patch if the stride misses it."""
  starts = list(range(0, size - patch + 1, stride))
  if starts[-1] != size - patch:
    starts.append(size - patch)
  return np.asarray(starts)


def check_geometry(image_shape, patch_shape, stride):
  """Validated (H, W), (p, q), (s_rows, s_cols) as int tuples.

  Raises:
    ValueError: if a side is not a positive int, a patch is larger than the image or a
      stride larger than the patch.
  """
  image_shape = _pair(tuple(image_shape) if isinstance(image_shape, list) else image_shape,
                      "image_shape")
  patch_shape = _pair(patch_shape, "patch_shape")
  stride = _pair(stride, "stride")
  if patch_shape[0] > image_shape[0] or patch_shape[1] > image_shape[1]:
    raise ValueError(f"patch_shape {patch_shape} is larger than the image {image_shape}; "
                     "choose patches at most as large as the image.")
  if stride[0] > patch_shape[0] or stride[1] > patch_shape[1]:
    raise ValueError(f"stride {stride} is larger than patch_shape {patch_shape}, which would "
                     "leave pixels in no patch; choose a stride at most the patch side.")
  return image_shape, patch_shape, stride


@functools.lru_cache(maxsize=64)
def patch_indices(image_shape, patch_shape, stride) -> np.ndarray:
  """Flat pixel indices (n_patches, p q) of every patch, row-major corners then pixels."""
  (H, W), (p, q), (sr, sc) = check_geometry(image_shape, patch_shape, stride)
  rows, cols = corners(H, p, sr), corners(W, q, sc)
  start = (rows[:, None] * W + cols[None, :]).reshape(-1)
  offset = (np.arange(p)[:, None] * W + np.arange(q)[None, :]).reshape(-1)
  indices = start[:, None] + offset[None, :]
  indices.setflags(write=False)
  return indices


@functools.lru_cache(maxsize=64)
def _coverage(image_shape, patch_shape, stride) -> np.ndarray:
  """How many patches cover each pixel, (H W,) float64 (every entry >= 1)."""
  indices = patch_indices(image_shape, patch_shape, stride)
  H, W = image_shape
  return np.bincount(indices.reshape(-1), minlength=H * W).astype(np.float64)


def n_patches(image_shape, patch_shape, stride=1) -> int:
  """The number of patches of an (H, W) image, as ``extract_patches`` returns them."""
  return patch_indices(*check_geometry(image_shape, patch_shape, stride)).shape[0]


def extract_flat(u: jax.Array, image_shape, patch_shape, stride) -> jax.Array:
  """The patches (n_patches, p q) of one flat image u (H W,); geometry already checked."""
  return u[jnp.asarray(patch_indices(image_shape, patch_shape, stride))]


def overlap_add_flat(P: jax.Array, image_shape, patch_shape, stride) -> jax.Array:
  """The transpose of ``extract_flat``: every patch added back at its place, (H W,)."""
  H, W = image_shape
  indices = jnp.asarray(patch_indices(image_shape, patch_shape, stride))
  return jnp.zeros(H * W, P.dtype).at[indices.reshape(-1)].add(P.reshape(-1))


def average_flat(P: jax.Array, image_shape, patch_shape, stride) -> jax.Array:
  """Overlap averaging of the patches (n_patches, p q) of one image: (H W,)."""
  count = jnp.asarray(_coverage(image_shape, patch_shape, stride), P.dtype)
  return overlap_add_flat(P, image_shape, patch_shape, stride) / count


def _as_images(images, name):
  images = _checks.as_float_array(images, name)
  _checks.check_ndim(images, name, (2, 3), "(H, W) or (N, H, W)")
  return images


def extract_patches(images: ArrayLike, patch_shape, *, stride=1) -> jax.Array:
  """All (or strided) p x q patches of each image, flattened row-major.

  Args:
    images: (N, H, W) batch or one (H, W) image, floating.
    patch_shape: p, or the pair (p, q), at most (H, W).
    stride: step between top-left corners, an int or a pair (the last corner is always
      included, see the module docstring).

  Returns:
    (N, n_patches, p q) patches, or (n_patches, p q) for one image; corners row-major.

  Raises:
    ValueError: if ``images`` is not 2-D or 3-D floating, or a size is not a positive int
      or a patch is larger than the image.

  Example:
    >>> import jax.numpy as jnp
    >>> extract_patches(jnp.arange(12.0).reshape(3, 4), (2, 2), stride=2).tolist()
    [[0.0, 1.0, 4.0, 5.0], [2.0, 3.0, 6.0, 7.0], [4.0, 5.0, 8.0, 9.0], [6.0, 7.0, 10.0, 11.0]]
  """
  images = _as_images(images, "images")
  geometry = check_geometry(images.shape[-2:], patch_shape, stride)
  flat = images.reshape(*images.shape[:-2], -1)
  if flat.ndim == 1:
    return extract_flat(flat, *geometry)
  return jax.vmap(lambda u: extract_flat(u, *geometry))(flat)


def reassemble_patches(patches: ArrayLike, image_shape, patch_shape, *, stride=1) -> jax.Array:
  """Images from their patches, each pixel the average of the patches covering it.

  The inverse of ``extract_patches`` on consistent patches (scikit-learn's
  ``reconstruct_from_patches_2d`` for ``stride=1``); for modified patches (denoised,
  projected) it is the least-squares image argmin_u ||extract(u) - patches||^2.

  Args:
    patches: (N, n_patches, p q) or (n_patches, p q), as ``extract_patches`` returns them
      for images of ``image_shape`` at this ``stride``.
    image_shape: (H, W).
    patch_shape: p, or the pair (p, q).
    stride: as in ``extract_patches``.

  Returns:
    (N, H, W) images, or (H, W) for one image's patches.

  Raises:
    ValueError: if the patch count or length does not match the geometry.
  """
  patches = _checks.as_float_array(patches, "patches")
  _checks.check_ndim(patches, "patches", (2, 3), "(n_patches, p q) or (N, n_patches, p q)")
  geometry = check_geometry(image_shape, patch_shape, stride)
  expected = (n_patches(*geometry), geometry[1][0] * geometry[1][1])
  if patches.shape[-2:] != expected:
    raise ValueError(f"patches has shape {tuple(patches.shape)}; images of shape "
                     f"{geometry[0]} with {geometry[1]} patches at stride {geometry[2]} give "
                     f"(..., {expected[0]}, {expected[1]}). Pass the same image_shape and "
                     "stride as to extract_patches.")
  H, W = geometry[0]
  if patches.ndim == 2:
    return average_flat(patches, *geometry).reshape(H, W)
  return jax.vmap(lambda P: average_flat(P, *geometry))(patches).reshape(-1, H, W)
