"""The patch operator: an image to its stacked patches; its transpose is overlap-add.

For an (H, W) image flattened row-major to u (H W,), ``patches(image_shape, patch_shape,
stride=s)`` maps u to the concatenated patches (n_patches p q,), the rows of
``conejax.extract_patches`` flattened. Its transpose adds every patch back at its place
(overlap-add); overlap averaging is ``A.T`` divided by ``A.T`` of ones. It composes with
every other operator: ``patches(...) @ blur(...)`` gives the patches of the blurred image.
"""

from __future__ import annotations

from conejax import patches as _patches_module
from conejax.operators._base import LinearOperator
from conejax.operators._base import pytree_dataclass
from conejax.operators._base import static_field


@pytree_dataclass
class Patches(LinearOperator):
  """u (H W,) -> its patches (n_patches p q,), corners row-major, each patch row-major."""
  image_shape: tuple[int, int] = static_field()
  patch_shape: tuple[int, int] = static_field()
  stride: tuple[int, int] = static_field()

  in_size = property(lambda self: self.image_shape[0] * self.image_shape[1])
  out_size = property(lambda self: self.n_patches * self.patch_shape[0] * self.patch_shape[1])

  @property
  def n_patches(self) -> int:
    return _patches_module.n_patches(self.image_shape, self.patch_shape, self.stride)

  def _mv(self, u):
    geometry = (self.image_shape, self.patch_shape, self.stride)
    return _patches_module.extract_flat(u, *geometry).reshape(-1)


def patches(image_shape, patch_shape, *, stride=1) -> LinearOperator:
  """The linear map from an image to its stacked p x q patches.

  Args:
    image_shape: (H, W) of the image, flattened row-major.
    patch_shape: p, or the pair (p, q).
    stride: step between top-left corners (an int or a pair); the last corner along each
      axis is always included, so every pixel is covered.

  Returns:
    The operator from (H W,) to (n_patches p q,); ``.T`` is overlap-add (from
    ``jax.linear_transpose``, a scatter-add).

  Raises:
    ValueError: if a size is not a positive int or the patch is larger than the image.

  Example:
    >>> A = patches((3, 4), 2, stride=2)
    >>> A.in_size, A.out_size
    (12, 16)
  """
  geometry = _patches_module.check_geometry(image_shape, patch_shape, stride)
  return Patches(*geometry)
