"""Image operators: pixel masks, blurs, Fourier filters, average pooling and resizing.

Images of shape (H, W) travel as flat signals of shape (H * W,), flattened row-major
(``image.reshape(-1)``); each operator stores its image shape as static metadata.

``blur`` is a true 2-D convolution (the kernel is flipped), centred as
``scipy.signal.convolve2d(..., mode="same")``: with kernel k of shape (kh, kw),

    (A x)[i, j] = sum_{a, b} k[a, b] x[i + (kh - 1) // 2 - a, j + (kw - 1) // 2 - b],

where x outside the image follows ``boundary``:

- "zero": zero padding (scipy ``boundary="fill"``, ndimage ``mode="constant"``);
- "periodic": the image repeats, i.e. circular convolution (``"wrap"`` in both);
- "reflect": half-sample symmetric padding, the edge pixel repeated, d c b a | a b c d | d c b a
  (``jnp.pad`` ``mode="symmetric"``, scipy ``boundary="symm"``, ndimage ``mode="reflect"``).

``scipy.ndimage.convolve`` agrees for odd kernel sides; for an even side it centres the
kernel one pixel the other way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from conejax import _checks
from conejax.operators._base import LinearOperator
from conejax.operators._base import float_parameter
from conejax.operators._base import pytree_dataclass
from conejax.operators._base import static_field

_HIGHEST = lax.Precision.HIGHEST
BOUNDARIES = ("zero", "periodic", "reflect")
_PAD_MODE = {"zero": "constant", "periodic": "wrap", "reflect": "symmetric"}
# "auto" uses the FFT once the kernel is larger than this on either side.
FFT_ABOVE = 7


@pytree_dataclass
class Mask(LinearOperator):
  """Diagonal weighting u -> weights * u; self-adjoint."""
  weights: jax.Array
  size: int = static_field()

  in_size = property(lambda self: self.size)
  out_size = property(lambda self: self.size)

  def _mv(self, u):
    return self.weights.astype(u.dtype) * u

  def transpose(self):
    return self


@pytree_dataclass
class Blur(LinearOperator):
  """Same-size 2-D convolution with ``kernel``; see the module docstring."""
  kernel: jax.Array
  image_shape: tuple[int, int] = static_field()
  boundary: str = static_field()
  method: str = static_field()

  in_size = property(lambda self: self.image_shape[0] * self.image_shape[1])
  out_size = property(lambda self: self.image_shape[0] * self.image_shape[1])

  def _mv(self, u):
    (H, W), (kh, kw) = self.image_shape, self.kernel.shape
    kernel = self.kernel.astype(u.dtype)
    # Pad so that a "valid" convolution gives the centred "same" output of the docstring.
    pads = ((kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2))
    x = jnp.pad(u.reshape(H, W), pads, mode=_PAD_MODE[self.boundary])
    if self.method == "direct":
      # lax.conv_general_dilated correlates, so the flipped kernel makes it a convolution.
      out = lax.conv_general_dilated(x[None, None], kernel[::-1, ::-1][None, None], (1, 1),
                                     "VALID", precision=_HIGHEST)[0, 0]
    else:
      # Circular convolution on the padded grid equals the linear one away from its first
      # kh - 1 rows and kw - 1 columns, which are dropped.
      spectrum = jnp.fft.rfft2(x) * jnp.fft.rfft2(kernel, s=x.shape)
      out = jnp.fft.irfft2(spectrum, s=x.shape)[kh - 1:, kw - 1:]
    return out.reshape(-1)


@pytree_dataclass
class Downsample(LinearOperator):
  """Average pooling over non-overlapping factor x factor blocks."""
  factor: int = static_field()
  image_shape: tuple[int, int] = static_field()

  in_size = property(lambda self: self.image_shape[0] * self.image_shape[1])
  out_size = property(lambda self: self.in_size // self.factor**2)

  def _mv(self, u):
    (H, W), f = self.image_shape, self.factor
    return u.reshape(H // f, f, W // f, f).mean(axis=(1, 3)).reshape(-1)


def area_weights(n_in: int, n_out: int) -> np.ndarray:
  """The (n_out, n_in) matrix of 1-D resampling by area averaging, in float64.

  Output pixel i covers [i s, (i + 1) s) of the input axis, s = n_in / n_out, and averages
  the input pixels [j, j + 1) by their overlap with it: R[i, j] = |[i s, (i + 1) s) n
  [j, j + 1)| / s. Every row sums to 1; for an integer factor it is average pooling, and
  for n_out > n_in each output pixel takes the one or two input pixels under it.
  """
  s = n_in / n_out
  low = np.arange(n_out)[:, None] * s
  j = np.arange(n_in)[None, :]
  return np.clip(np.minimum(low + s, j + 1) - np.maximum(low, j), 0, None) / s


@pytree_dataclass
class Resize(LinearOperator):
  """Separable area-averaging resampling, image -> R_h image R_w^T; see ``resize``."""
  in_shape: tuple[int, int] = static_field()
  out_shape: tuple[int, int] = static_field()

  in_size = property(lambda self: self.in_shape[0] * self.in_shape[1])
  out_size = property(lambda self: self.out_shape[0] * self.out_shape[1])

  def _mv(self, u):
    rows, cols = (jnp.asarray(area_weights(i, o), u.dtype)
                  for i, o in zip(self.in_shape, self.out_shape))
    image = jnp.matmul(rows, u.reshape(self.in_shape), precision=_HIGHEST)
    return jnp.matmul(image, cols.T, precision=_HIGHEST).reshape(-1)


@pytree_dataclass
class FourierFilter(LinearOperator):
  """u -> Re(ifft2(response * fft2(u))) on the (H, W) image; self-adjoint for real response."""
  response: jax.Array
  image_shape: tuple[int, int] = static_field()

  in_size = property(lambda self: self.image_shape[0] * self.image_shape[1])
  out_size = property(lambda self: self.image_shape[0] * self.image_shape[1])

  def _mv(self, u):
    spectrum = jnp.fft.fft2(u.reshape(self.image_shape)) * self.response.astype(u.dtype)
    return jnp.real(jnp.fft.ifft2(spectrum)).astype(u.dtype).reshape(-1)


def _check_image_shape(image_shape) -> tuple[int, int]:
  if not isinstance(image_shape, (tuple, list)) or len(image_shape) != 2:
    raise ValueError(f"image_shape must be a pair (height, width); got {image_shape!r}.")
  H, W = (_checks.check_positive_int(side, "each side of image_shape") for side in image_shape)
  return H, W


def mask(M: ArrayLike) -> LinearOperator:
  """Keeps the pixels where M is 1 and zeros the rest: A u = M * u, self-adjoint.

  Any real weights work (0/1 for missing pixels, or soft weights). For one mask per sample,
  build a batch of operators with ``jax.vmap(mask)(Ms)`` (Ms of shape (N, m)) and apply it as
  ``jax.vmap(lambda A, u: A.mv(u))(masks, U)``.

  Args:
    M: (m,) weights; booleans and integers become floats.

  Returns:
    The operator from (m,) to (m,).

  Raises:
    ValueError: if M is not 1-D or not finite.

  Example:
    >>> A = mask(jnp.array([1.0, 0.0, 1.0]))
    >>> A.mv(jnp.array([4.0, 5.0, 6.0])).tolist()
    [4.0, 0.0, 6.0]
  """
  M = float_parameter(M, "M")
  _checks.check_ndim(M, "M", (1,), "(m,), one weight per pixel of the flattened image")
  return Mask(M, size=M.shape[0])


def blur(kernel: ArrayLike, image_shape: tuple[int, int], *, boundary: str = "zero",
         method: str = "auto") -> LinearOperator:
  """2-D convolution of each (H, W) image with ``kernel``, output the same size.

  Args:
    kernel: (kh, kw) real kernel, applied flipped (a true convolution); any size.
    image_shape: (H, W), the image shape; signals are flattened row-major to (H * W,).
    boundary: "zero", "periodic" or "reflect" (half-sample symmetric); see the module doc.
    method: "direct" (``lax.conv_general_dilated``), "fft" (``jnp.fft.rfft2``) or "auto":
      the FFT once either side of the kernel exceeds 7. Both give the same operator.

  Returns:
    The operator from (H * W,) to (H * W,).

  Raises:
    ValueError: if the kernel is not 2-D, empty or not finite, or an option is unknown.

  Example:
    >>> A = blur(jnp.ones((3, 3)) / 9, (28, 28), boundary="reflect")
    >>> A.mv(jnp.ones(784)).shape
    (784,)
  """
  kernel = float_parameter(kernel, "kernel")
  _checks.check_ndim(kernel, "kernel", (2,), "(kh, kw)")
  if kernel.size == 0:
    raise ValueError(f"kernel must have at least one entry; got shape {kernel.shape}.")
  image_shape = _check_image_shape(image_shape)
  _checks.check_choice(boundary, "boundary", BOUNDARIES)
  _checks.check_choice(method, "method", ("auto", "direct", "fft"))
  if method == "auto":
    method = "fft" if max(kernel.shape) > FFT_ABOVE else "direct"
  return Blur(kernel, image_shape=image_shape, boundary=boundary, method=method)


def fourier_filter(response: ArrayLike, image_shape: tuple[int, int]) -> LinearOperator:
  """Multiplies the 2-D discrete Fourier transform of each image by a real ``response``.

  A u = Re(ifft2(response * fft2(u))), a circular filter: ``response`` 0 on a frequency
  band and 1 elsewhere is a notch (band-stop) filter, e.g. to remove periodic noise. For a
  response symmetric under f -> -f (as every real filter's is) the real part drops nothing.

  Args:
    response: (H, W) real frequency response on the ``jnp.fft.fft2`` grid (index 0 is the
      zero frequency; ``jnp.fft.fftfreq`` gives the frequencies).
    image_shape: (H, W); signals are flattened row-major to (H * W,).

  Returns:
    The operator from (H * W,) to (H * W,).

  Raises:
    ValueError: if response is not finite or its shape is not image_shape.

  Example:
    >>> A = fourier_filter(jnp.ones((28, 28)), (28, 28))   # the identity
    >>> A.mv(jnp.arange(784.0))[:3].round(3).tolist()
    [0.0, 1.0, 2.0]
  """
  response = float_parameter(response, "response")
  image_shape = _check_image_shape(image_shape)
  if response.shape != image_shape:
    raise ValueError(f"response must have the image shape {image_shape} (one weight per "
                     f"frequency of fft2); got shape {response.shape}.")
  return FourierFilter(response, image_shape=image_shape)


def downsample(factor: int, image_shape: tuple[int, int]) -> LinearOperator:
  """Average pooling of (H, W) images over factor x factor blocks.

  The adjoint spreads each low-resolution value over its block, times 1 / factor^2.

  Args:
    factor: positive integer dividing both H and W.
    image_shape: (H, W); signals are flattened row-major to (H * W,).

  Returns:
    The operator from (H * W,) to (H / factor * W / factor,), output flattened row-major.

  Raises:
    ValueError: if factor is not a positive integer dividing both sides.
  """
  factor = _checks.check_positive_int(factor, "factor")
  H, W = _check_image_shape(image_shape)
  if H % factor or W % factor:
    fix = (H - H % factor, W - W % factor)
    raise ValueError(
        f"downsample needs both image sides {(H, W)} to be divisible by factor {factor}; "
        f"crop the images to {fix} (or pad them) first, or pick a factor dividing both.")
  return Downsample(factor=factor, image_shape=(H, W))


def resize(in_shape: tuple[int, int], out_shape: tuple[int, int]) -> LinearOperator:
  """Resamples (H, W) images to another shape by area averaging, for any factor.

  Each output pixel is the average of the input image over the rectangle it covers when
  both images span the same square: along each axis, output pixel i covers
  [i s, (i + 1) s) of the input, s = in / out, and input pixel j contributes its overlap
  with that interval (``area_weights``). For an integer factor this is ``downsample``
  (average pooling); upsampling (out > in) spreads each input pixel over the output pixels
  under it. Constant images stay constant. The adjoint, from ``jax.linear_transpose``, is
  R_h^T image R_w.

  Args:
    in_shape: (H, W) of the input images; signals are flattened row-major to (H * W,).
    out_shape: (H', W') of the output images, any positive sizes.

  Returns:
    The operator from (H * W,) to (H' * W',).

  Raises:
    ValueError: if a shape is not a pair of positive integers.

  Example:
    >>> A = resize((28, 28), (8, 8))     # MNIST digits at the resolution of load_digits
    >>> A.mv(jnp.ones(784)).reshape(8, 8)[0, :3].round(6).tolist()
    [1.0, 1.0, 1.0]
  """
  return Resize(in_shape=_check_image_shape(in_shape), out_shape=_check_image_shape(out_shape))
