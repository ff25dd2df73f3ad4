"""Cones of image patches: training on images and the patch-cone projection as a denoiser.

A ``PatchCones`` models p x q patches (rows of length m = p q, see ``conejax.patches``) by K
non-negative dictionaries W_k (m, d), unit atoms as columns. With ``signed=True`` (the
default, the choice that won, see docs/restore.md) each patch x is split into its mean,
a free DC term, and the rest r = x - mean(x), coded on the signed pair [W_k, -W_k]:

    (a, b) = argmin_{a, b >= 0} 0.5 ||W_k (a - b) - r||^2 + mu (sum(a) + sum(b)),
    P(x) = mean(x) + W_k (a - b),

a non-negative least squares on 2 d atoms (for mu > 0 it is the Lasso on W_k). The atoms
are learnt by NMF on the positive and negative parts of training residuals, max(r, 0) and
max(-r, 0), stacked as samples. With ``signed=False`` raw patches are coded on W_k alone
(a plain cone; this lost to total variation). With K > 1 each patch takes the cone of the
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


@functools.partial(jax.tree_util.register_dataclass, data_fields=["cones"],
                   meta_fields=["patch_shape", "signed"])
@dataclasses.dataclass(frozen=True)
class PatchCones:
  """Cones of p x q patches.

  Attributes:
    cones: ``conejax.Cones`` with W of shape (K, p q, d), non-negative unit atoms.
    patch_shape: (p, q), static.
    signed: static; True codes each patch's residual about its mean on [W_k, -W_k].
  """
  cones: _cone.Cones
  patch_shape: tuple[int, int]
  signed: bool = True

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
                    signed: bool = True, n_train: int | None = 20000, stride=2,
                    max_iter: int = 100, kcones_iter: int = 3) -> PatchCones:
  """Cones of p x q patches from training images.

  Args:
    images: (N, H, W) array or a list of (H, W) arrays, grayscale, floating (e.g. in [0, 1]).
    patch_shape: p or (p, q).
    key: PRNG key of the patch sample and of the NMF / k-cones initialisations.
    rank: atoms per cone d, at most p q.
    n_cones: K; above 1 the patches are clustered by ``conejax.kcones``.
    signed: free DC term and signed codes (see the module docstring); False fits plain
      cones to the raw (non-negative) patches.
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
  X = _training_patches(images, patch_shape, n_train, stride, rng)
  if signed:
    span = np.max(np.abs(X))  # the images' scale: "flat" is relative to it
    R = X - X.mean(axis=1, keepdims=True)
    X = np.concatenate([np.maximum(R, 0), np.maximum(-R, 0)])
    X = X[X.sum(axis=1) > 1e-3 * m * span]  # flat patches carry no shape
    if not len(X):
      raise ValueError("images: every training patch is flat (constant); restoration "
                       "needs images with some texture or edges.")
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
                  patch_shape=patch_shape, stride=geometry[2], max_iter=max_iter)
  return PatchCones(_cone.make_cones(W, settings=settings), patch_shape, bool(signed))


def _signed_gram(W):
  D = jnp.concatenate([W, -W], axis=1)
  return D, jnp.dot(D.T, D, precision=_HIGHEST)


def _cone_fits(pc: PatchCones, X: jax.Array, mu, solver, reweight: int):
  """Every cone's coding of patches X (n, m) at penalty mu (a scalar or (n, 1)): the DC term
  (n, 1), the fits (K, n, m) about it, penalised objectives (K, n) and code counts (K, n)."""
  d = pc.W.shape[-1] * (2 if pc.signed else 1)
  solver, _ = _nnls.check_options(solver, max_iter=None, tol=None, batch_size=2048,
                                  differentiation="implicit", n_atoms=d)
  mu = jnp.asarray(mu, X.dtype)
  dc = jnp.mean(X, axis=1, keepdims=True) if pc.signed else jnp.zeros_like(X[:, :1])
  R = X - dc
  zero = jnp.zeros((), X.dtype)

  def one_cone(W):
    W = W.astype(X.dtype)
    D, G = _signed_gram(W) if pc.signed else (W, jnp.dot(W.T, W, precision=_HIGHEST))
    C = jnp.dot(R, D, precision=_HIGHEST)
    net = lambda h: h[:, :W.shape[1]] - h[:, W.shape[1]:] if pc.signed else h
    # The penalty is folded into the right-hand side, so it may differ per atom.
    h = _nnls.solve_gram(G, C - mu, zero, solver=solver).h
    penalty = jnp.full_like(h, mu)
    for _ in range(reweight):
      magnitude = jnp.abs(net(h))
      weight = mu / (magnitude + jnp.where(mu > 0, mu, 1))
      penalty = mu * (jnp.concatenate([weight, weight], 1) if pc.signed else weight)
      h = _nnls.solve_gram(G, C - penalty, zero, solver=solver).h
    fit = jnp.dot(h, D.T, precision=_HIGHEST)
    objective = 0.5 * jnp.sum((fit - R) ** 2, axis=1) + jnp.sum(penalty * h, axis=1)
    # Codes at rounding level (below sqrt(eps) of the patch's largest) are not counted, so
    # the count does not flip with the rounding of the data's scale.
    magnitude = jnp.abs(net(h))
    small = jnp.sqrt(jnp.finfo(h.dtype).eps) * jnp.max(magnitude, axis=1, keepdims=True)
    return fit, objective, jnp.sum(magnitude > small, axis=1)

  if pc.W.shape[0] == 1:
    fit, objective, nnz = one_cone(pc.W[0])
    return dc, fit[None], objective[None], nnz[None]
  return (dc, *lax.map(one_cone, pc.W))


def project_patches(pc: PatchCones, X: jax.Array, mu, *, solver="auto",
                    reweight: int = 0) -> tuple:
  """The patch-cone projection of patches X (n, m) at penalty mu: (P(X), nnz), traced.

  With ``reweight`` r > 0 the codes are recomputed r times with per-atom penalties
  mu eps / (|h_j| + eps), eps = mu, from the previous codes h (reweighted L1, Candes,
  Wakin and Boyd 2008): large coefficients are shrunk less, a closer surrogate of the
  number of atoms.

  Returns the projections (n, m) and each patch's number of non-zero codes (n,), on the
  cone of smallest penalised objective.
  """
  dc, fits, objectives, nnzs = _cone_fits(pc, X, mu, solver, reweight)
  if pc.W.shape[0] == 1:
    return dc + fits[0], nnzs[0]
  best = jnp.argmin(objectives, axis=0)
  take = lambda a: jnp.take_along_axis(a, best[None, :, None] if a.ndim == 3 else best[None],
                                       axis=0)[0]
  return dc + take(fits), take(nnzs)


def posterior_patches(pc: PatchCones, X: jax.Array, mu, temperature, *, solver="auto",
                      reweight: int = 0) -> tuple:
  """The posterior mixture over the K cones of patches X (n, m) at penalty mu, traced.

  Cone k's estimate of patch j is x_jk = mean(x_j) + W_k c_jk (as ``project_patches``), its
  posterior probability p_jk = softmax_k(-J_jk / T) from the penalised objectives J_jk
  (T: ``temperature``, a scalar or (n,); see ``conejax.restore`` for its default).

  Returns:
    (dc, fits, p, nnz): the DC terms (n, 1), the fits (K, n, m) (x_jk = dc + fits[k]), the
    probabilities (K, n), and the expected number of non-zero codes sum_k p_jk nnz_jk (n,),
    in X's dtype.
  """
  dc, fits, objectives, nnzs = _cone_fits(pc, X, mu, solver, reweight)
  T = jnp.broadcast_to(jnp.asarray(temperature, X.dtype), objectives.shape[1:])
  gap = objectives - jnp.min(objectives, axis=0, keepdims=True)
  p = jax.nn.softmax(-gap / T[None], axis=0)
  return dc, fits, p, jnp.sum(p * nnzs.astype(X.dtype), axis=0)
