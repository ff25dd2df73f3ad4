"""Cones of image patches: training on images and the patch-cone projection as a denoiser.

A ``PatchCones`` models p x q patches (rows of length m = p q, see ``conejax.patches``) by K
non-negative dictionaries W_k (m, d), unit atoms as columns. With ``signed=True`` (the
default, the choice that won, see docs/restore.md) each patch x is split into a free term
f(x), unpenalised, and the rest r = x - f(x), coded on the signed pair [W_k, -W_k]:

    (a, b) = argmin_{a, b >= 0} 0.5 ||W_k (a - b) - r||^2 + mu (sum(a) + sum(b)),
    P(x) = f(x) + W_k (a - b).

f(x) is the patch's least-squares polynomial of degree ``free_degree``: 0 its mean (a DC
term), 1 its plane (mean and the two ramps), which represents smooth shading exactly and
leaves the atoms for edges and texture. The codes solve a non-negative least squares on
2 d atoms (for mu > 0 it is the Lasso on W_k). The atoms are learnt by NMF on the positive
and negative parts of training residuals, max(r, 0) and max(-r, 0), stacked as samples.
With ``signed=False`` raw patches are coded on W_k alone (a plain cone; this lost to total
variation). With K > 1 each patch takes the cone of the
smallest penalised objective, as a Gaussian-mixture patch prior takes its most likely
component (EPLL, Zoran and Weiss 2011); the cones come from ``conejax.kcones``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from conejax import _checks, _cone, _nmf, _nnls, _uses
from conejax import patches as _patches

_HIGHEST = lax.Precision.HIGHEST


FREE_DEGREES = (0, 1)


def check_free_degree(free_degree, signed: bool) -> int:
  """``free_degree`` as an int, or a ValueError that names it and the fix."""
  if isinstance(free_degree, bool) or free_degree not in FREE_DEGREES:
    raise ValueError(f"free_degree must be one of {FREE_DEGREES}; got {free_degree!r}.")
  if free_degree and not signed:
    raise ValueError("free_degree > 0 needs signed=True: a plain cone of raw patches has no "
                     "free term.")
  return int(free_degree)


def free_basis(patch_shape, degree: int) -> np.ndarray:
  """An orthonormal basis (p q, n_free) of the polynomials of ``degree`` on a p x q patch
  (row-major pixels): 0 the constant (n_free 1), 1 also the two ramps (n_free 3)."""
  p, q = patch_shape
  y, x = np.mgrid[0:p, 0:q].astype(np.float64)
  columns = [np.ones(p * q)] + ([(y - y.mean()).ravel(), (x - x.mean()).ravel()]
                                if degree >= 1 else [])
  Q, _ = np.linalg.qr(np.stack(columns, axis=1))
  return Q * np.sign(Q[0, 0])  # the constant column positive: 1 / sqrt(p q)


def free_part(X, patch_shape, degree: int):
  """Each patch's least-squares polynomial of ``degree`` (the free term), X (n, p q)."""
  if degree == 0:
    return jnp.mean(X, axis=-1, keepdims=True)
  B = jnp.asarray(free_basis(patch_shape, degree), X.dtype)
  return jnp.dot(jnp.dot(X, B, precision=_HIGHEST), B.T, precision=_HIGHEST)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["cones"],
                   meta_fields=["patch_shape", "signed", "free_degree"])
@dataclasses.dataclass(frozen=True)
class PatchCones:
  """Cones of p x q patches.

  Attributes:
    cones: ``conejax.Cones`` with W of shape (K, p q, d), non-negative unit atoms.
    patch_shape: (p, q), static.
    signed: static; True codes each patch's residual about its free term on [W_k, -W_k].
    free_degree: static, with ``signed``: the free term is the patch's least-squares
      polynomial of this degree, 0 its mean (a DC term), 1 its plane (mean and ramps).
  """
  cones: _cone.Cones
  patch_shape: tuple[int, int]
  signed: bool = True
  free_degree: int = 0

  def __post_init__(self):
    check_free_degree(self.free_degree, self.signed)

  @property
  def W(self) -> jax.Array:
    return self.cones.W


def _training_patches(images, patch_shape, n_train, stride, rng):
  if isinstance(images, (list, tuple)):
    images = [np.asarray(_checks.as_float_array(x, "images")) for x in images]
  else:
    images = np.asarray(_checks.as_float_array(images, "images"))
    images = images[None] if images.ndim == 2 else images
  if len(images) == 0:
    raise ValueError("images is empty; pass one or more (H, W) training images.")
  rows = []
  for image in images:
    if image.ndim != 2:
      raise ValueError(f"each training image must be 2-D (H, W), grayscale; got shape "
                       f"{image.shape}. Convert colour images to grayscale first.")
    _checks.check_finite(image, "images")
    rows.append(np.asarray(_patches.extract_patches(image, patch_shape, stride=stride)))
  X = np.concatenate(rows)
  if n_train is not None and n_train < len(X):
    X = X[rng.choice(len(X), n_train, replace=False)]
  return X


def fit_patch_cones(images, patch_shape, *, key: jax.Array, rank: int = 32, n_cones: int = 1,
                    signed: bool = True, free_degree: int = 0, n_train: int | None = 20000,
                    stride=2, max_iter: int = 100, kcones_iter: int = 3) -> PatchCones:
  """Cones of p x q patches from training images.

  Args:
    images: (N, H, W) array or a list of (H, W) arrays, grayscale, floating (e.g. in [0, 1]).
    patch_shape: p or (p, q).
    key: PRNG key of the patch sample and of the NMF / k-cones initialisations.
    rank: atoms per cone d, at most p q.
    n_cones: K; above 1 the patches are clustered by ``conejax.kcones``.
    signed: free DC term and signed codes (see the module docstring); False fits plain
      cones to the raw (non-negative) patches.
    free_degree: with ``signed``, the degree of the free polynomial term: 0 the patch's
      mean, 1 its least-squares plane (mean and two ramps, unpenalised), so smooth shading
      costs no atoms (the atoms are learnt about the mean for every degree; see the
      module docstring).
    n_train: patches drawn at random from all the images' patches (None: all of them).
    stride: of the training patches' corners.
    max_iter: NMF iterations (each k-cones round's ``fit_cones`` for K > 1).
    kcones_iter: k-cones rounds for K > 1.

  Returns:
    ``PatchCones`` with W of shape (K, p q, rank).

  Raises:
    ValueError: on empty, non-2-D, non-finite or (with ``signed=False``) negative images,
      or a rank above p q.
  """
  _checks.require_concrete("fit_patch_cones", "Fit outside jit; restore works under jit.",
                           images=images)
  geometry = _patches.check_geometry((10**9, 10**9), patch_shape, stride)
  patch_shape = geometry[1]
  m = patch_shape[0] * patch_shape[1]
  rank = _checks.check_positive_int(rank, "rank")
  n_cones = _checks.check_positive_int(n_cones, "n_cones")
  if rank > m:
    raise ValueError(f"rank {rank} exceeds the {m} pixels of a {patch_shape} patch; choose "
                     f"rank <= {m} (or more cones, n_cones, for a larger dictionary).")
  sample_key, fit_key = jax.random.split(key)
  rng = np.random.default_rng(np.asarray(jax.random.key_data(sample_key)).ravel())
  free_degree = check_free_degree(free_degree, signed)  # before the fit, not after it
  X = _training_patches(images, patch_shape, n_train, stride, rng)
  if signed:
    span = np.max(np.abs(X))  # the images' scale: "flat" is relative to it
    # The atoms are learnt about the mean for every free_degree: learnt about the plane
    # they restored 0.6-0.8 dB worse (docs/restore.md), the ramp-like atoms they lose
    # being cheap for the codes of the plane's residual.
    R = X - X.mean(axis=1, keepdims=True)
    X = np.concatenate([np.maximum(R, 0), np.maximum(-R, 0)])
    X = X[X.sum(axis=1) > 1e-3 * m * span]  # flat patches carry no shape
    if not len(X):
      raise ValueError("images: every training patch is flat (its free term alone); "
                       "restoration needs images with some texture or edges.")
  else:
    _checks.check_nonnegative(X, "images")
  if n_cones == 1:
    W = _nmf.nmf(X, rank, key=fit_key, max_iter=max_iter).W[None]
  else:
    _, cones = _uses.kcones(X, n_cones, rank, key=fit_key, n_iter=kcones_iter,
                            max_iter=max_iter)
    W = cones.W
  norm = jnp.linalg.norm(W, axis=1, keepdims=True)
  W = W / jnp.where(norm > 0, norm, 1)
  settings = dict(rank=rank, n_cones=n_cones, signed=bool(signed), n_train=int(len(X)),
                  patch_shape=patch_shape, stride=geometry[2], max_iter=max_iter,
                  free_degree=free_degree)
  return PatchCones(_cone.make_cones(W, settings=settings), patch_shape, bool(signed),
                    free_degree)


def _signed_gram(W):
  D = jnp.concatenate([W, -W], axis=1)
  return D, jnp.dot(D.T, D, precision=_HIGHEST)


def code_size(pc: PatchCones) -> int:
  """The length of a patch's code on one cone: 2 d for signed cones ([W, -W]), else d."""
  return pc.W.shape[-1] * (2 if pc.signed else 1)


def _cone_fits(pc: PatchCones, X: jax.Array, mu, solver, reweight: int, codes=None):
  """Every cone's coding of patches X (n, m) at penalty mu (a scalar or (n, 1)): the free
  term (n, 1), or (n, m) for ``free_degree`` 1, the fits (K, n, m) about it, penalised
  objectives (K, n), code counts (K, n) and the codes (K, n, code_size), warm-started from
  ``codes`` (K, n, code_size) if given (the active set is exact from any start; a start
  near the answer saves its pivots)."""
  d = code_size(pc)
  solver, _ = _nnls.check_options(solver, max_iter=None, tol=None, batch_size=2048,
                                  differentiation="implicit", n_atoms=d)
  mu = jnp.asarray(mu, X.dtype)
  K = pc.W.shape[0]
  if codes is None:
    codes = jnp.zeros((K, X.shape[0], d), X.dtype)
  elif jnp.shape(codes) != (K, X.shape[0], d):
    raise ValueError(f"codes must have shape {(K, X.shape[0], d)} (cones, patches, code "
                     f"size), as project_patches returns them; got {jnp.shape(codes)}.")
  else:
    codes = codes.astype(X.dtype)
  dc = free_part(X, pc.patch_shape, pc.free_degree) if pc.signed else jnp.zeros_like(X[:, :1])
  R = X - dc
  zero = jnp.zeros((), X.dtype)

  def one_cone(args):
    W, h0 = args
    W = W.astype(X.dtype)
    D, G = _signed_gram(W) if pc.signed else (W, jnp.dot(W.T, W, precision=_HIGHEST))
    C = jnp.dot(R, D, precision=_HIGHEST)
    net = lambda h: h[:, :W.shape[1]] - h[:, W.shape[1]:] if pc.signed else h
    # The penalty is folded into the right-hand side, so it may differ per atom.
    h = _nnls.solve_gram(G, C - mu, zero, h0, solver=solver).h
    penalty = jnp.full_like(h, mu)
    for _ in range(reweight):
      magnitude = jnp.abs(net(h))
      weight = mu / (magnitude + jnp.where(mu > 0, mu, 1))
      penalty = mu * (jnp.concatenate([weight, weight], 1) if pc.signed else weight)
      h = _nnls.solve_gram(G, C - penalty, zero, h, solver=solver).h
    fit = jnp.dot(h, D.T, precision=_HIGHEST)
    objective = 0.5 * jnp.sum((fit - R) ** 2, axis=1) + jnp.sum(penalty * h, axis=1)
    # Codes at rounding level (below sqrt(eps) of the patch's largest) are not counted, so
    # the count does not flip with the rounding of the data's scale.
    magnitude = jnp.abs(net(h))
    small = jnp.sqrt(jnp.finfo(h.dtype).eps) * jnp.max(magnitude, axis=1, keepdims=True)
    return fit, objective, jnp.sum(magnitude > small, axis=1), h

  if K == 1:
    return (dc, *(a[None] for a in one_cone((pc.W[0], codes[0]))))
  return (dc, *lax.map(one_cone, (pc.W, codes)))


def project_patches(pc: PatchCones, X: jax.Array, mu, *, solver="auto", reweight: int = 0,
                    codes=None) -> tuple:
  """The patch-cone projection of patches X (n, m) at penalty mu: (P(X), nnz), traced.

  With ``reweight`` r > 0 the codes are recomputed r times with per-atom penalties
  mu eps / (|h_j| + eps), eps = mu, from the previous codes h (reweighted L1, Candes,
  Wakin and Boyd 2008): large coefficients are shrunk less, a closer surrogate of the
  number of atoms.

  ``codes`` (K, n, ``code_size(pc)``), e.g. the codes of the previous iterate of a
  restoration, warm-starts every cone's solve: the answer is the same (the active set is
  exact from any start), found with fewer pivots when the start is close.

  Returns (P, nnz, codes): the projections (n, m) and each patch's number of non-zero codes
  (n,), on the cone of smallest penalised objective, and every cone's codes (K, n,
  code_size).
  """
  dc, fits, objectives, nnzs, codes = _cone_fits(pc, X, mu, solver, reweight, codes)
  if pc.W.shape[0] == 1:
    return dc + fits[0], nnzs[0], codes
  best = jnp.argmin(objectives, axis=0)
  take = lambda a: jnp.take_along_axis(a, best[None, :, None] if a.ndim == 3 else best[None],
                                       axis=0)[0]
  return dc + take(fits), take(nnzs), codes


def posterior_patches(pc: PatchCones, X: jax.Array, mu, temperature, *, solver="auto",
                      reweight: int = 0, codes=None) -> tuple:
  """The posterior mixture over the K cones of patches X (n, m) at penalty mu, traced.

  Cone k's estimate of patch j is x_jk = mean(x_j) + W_k c_jk (as ``project_patches``), its
  posterior probability p_jk = softmax_k(-J_jk / T) from the penalised objectives J_jk
  (T: ``temperature``, a scalar or (n,); see ``conejax.restore`` for its default);
  ``codes`` warm-starts the solves, as in ``project_patches``.

  Returns:
    (dc, fits, p, nnz): the free terms (n, 1), or (n, m) with ``free_degree`` 1, the fits
    (K, n, m) (x_jk = dc + fits[k]), the probabilities (K, n), and the expected number of
    non-zero codes sum_k p_jk nnz_jk (n,), in X's dtype.
  """
  dc, fits, objectives, nnzs, _ = _cone_fits(pc, X, mu, solver, reweight, codes)
  T = jnp.broadcast_to(jnp.asarray(temperature, X.dtype), objectives.shape[1:])
  gap = objectives - jnp.min(objectives, axis=0, keepdims=True)
  p = jax.nn.softmax(-gap / T[None], axis=0)
  return dc, fits, p, jnp.sum(p * nnzs.astype(X.dtype), axis=0)
