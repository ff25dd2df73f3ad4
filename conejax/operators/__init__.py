"""Matrix-free linear forward operators: masks, blurs, Fourier filters, pooling, resizing, sensing.

Conventions: an operator A maps a flat signal u of shape (in_size,) to A u of shape
(out_size,); images of shape (H, W) are flattened row-major. Batches are rows: ``apply(A, U)``
maps U of shape (N, m) to (N, k), and ``apply_to_dictionary(A, W)`` maps a dictionary W of
shape (m, d), atoms as columns, to A W of shape (k, d). ``A.T`` is the adjoint, ``A @ B``
applies B then A, and ``A + B``, ``c * A`` and ``-A`` work as for matrices.

Operators are frozen dataclasses registered as pytrees: arrays are leaves, sizes and options
static. They cross ``jit`` and ``grad``, and ``jax.vmap(mask)(Ms)`` builds a batch of masks
(one per sample) to apply with ``jax.vmap(lambda A, u: A.mv(u))(masks, U)``.
"""

from conejax.operators._base import LinearOperator as LinearOperator
from conejax.operators._base import apply as apply
from conejax.operators._base import apply_to_dictionary as apply_to_dictionary
from conejax.operators._base import compose as compose
from conejax.operators._base import identity as identity
from conejax.operators._base import is_single as is_single
from conejax.operators._base import materialise as materialise
from conejax.operators._base import matrix as matrix
from conejax.operators._image import blur as blur
from conejax.operators._image import downsample as downsample
from conejax.operators._image import fourier_filter as fourier_filter
from conejax.operators._image import mask as mask
from conejax.operators._image import resize as resize
from conejax.operators._sensing import gaussian_sensing as gaussian_sensing
from conejax.operators._sensing import subsample as subsample
from conejax.operators._patches import patches as patches
from conejax.operators._solve import per_pixel_gain as per_pixel_gain
from conejax.operators._solve import regularised_least_squares as regularised_least_squares
