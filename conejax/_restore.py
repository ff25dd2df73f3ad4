"""Plug-and-play restoration of whole images with a patch-cone prior.

For an observation v = A u + noise (noise std ``sigma``) of an (H, W) image u, flattened
row-major, and any conejax operator A (mask, blur, downsample, sensing, compositions),
``restore`` runs half-quadratic splitting (HQS) on

    min_u  ||A u - v||^2 / (2 sigma^2) + sum over patches of the patch-cone prior,

alternating, for k = 1..n_iter with a decreasing prior level s_k,

    prior step:  z_k = average of P(patch(u_{k-1})) at penalty mu_k = tau s_k,
    data step:   u_k = argmin_u ||A u - v||^2 + alpha_k ||u - z_k||^2,
                 alpha_k = lam sigma^2 / s_k^2,

where P is the patch-cone projection (``conejax.PatchCones``: each patch's free term, its
mean or plane, plus its signed code on the best cone) and the average is over every patch
covering a pixel (weighted by 1 / (1 + nnz), the number of non-zero codes, with
``weights="sparsity"``: sparser patch estimates are less noisy, as in BM3D's aggregation).

Each prior step's codes warm-start the next one's exact active-set solves (the patches of
u_k are close to those of u_{k-1}): the same codes, found with fewer pivots. With
``solver="auto"`` the active set starts from those codes alone, without its usual APG
warm start (``ActiveSet(warm_start=0)``; the first step starts from zero codes).

The data step is the linear system (A^T A + alpha_k I) u = A^T v + alpha_k z_k,
``conejax.operators.regularised_least_squares``. For a mask and the identity it is solved
in closed form, u = (M v + alpha z) / (M^2 + alpha) per pixel; for every other operator by
``cg_iter`` conjugate-gradient steps started at z_k (with alpha_k = 0, noiseless data, CG
from z_k converges to the projection of z_k onto {A u = v}), using only ``A.mv`` and
``A.T.mv`` (the operator is never materialised). For average pooling CG is exact in two
steps (A^T A has two eigenvalues).

Schedule: s_k is geometric from ``sigma_start`` (default max(sigma, 0.1 r)) down to
``sigma_end`` (default max(sigma, 0.005 r)) over n_iter steps, r the image's data range
(``data_range``; by default the largest |value| of the image's first estimate u_0, so the
defaults are the same fractions of the signal at any scale of values: restoring c v with
noise c sigma gives c times the restoration of v), as in DPIR (Zhang et al. 2021): early steps
with a strong prior and a weak data weight fill in what A loses, later ones settle at the
noise level. The first iterate u_0 solves the data step with a tiny weight around the
normalised convolution G (A^T v) / G (A^T A 1), G a Gaussian of std 2 pixels (for a mask:
observed pixels kept, the rest smoothly interpolated; for pooling a smooth upsampling).
The result is the last prior step z_n (``output="prior"``) or the data step after it
(``output="data"``; with sigma = 0, alpha_k = 0 and it keeps the observed pixels of a mask
exactly, filling the others from the prior).

Uncertainty (``uncertainty=True``): the last prior step keeps every cone instead of the
best one. Patch j's estimate on cone k is x_jk = mean(x_j) + W_k c_jk, with penalised
objective J_jk = 0.5 ||W_k c_jk - r_j||^2 + mu_n |c_jk|_1, and its posterior probability is

    p_jk = softmax_k(-J_jk / T),   T = s_n^2 by default (``temperature``):

the prior step is the MAP denoiser of patches seen through Gaussian noise of std s_n (HQS's
splitting variable), so J_jk / s_n^2 is cone k's negative log posterior at its best code
(the normalisers are the same for every cone: equal ranks, equal prior weights), a Laplace
(MAP) approximation of each cone's evidence. Pixel i is then the two-level mixture: a patch
j covering it, drawn with the overlap weight omega_ji = w_j / sum_j' w_j' (w_j = 1, or
1 / (1 + sum_k p_jk nnz_jk) with ``weights="sparsity"``), then a cone k with p_jk; its mean
and variance (law of total variance) are

    z_i = sum_j omega_ji m_j(i),                        m_j = sum_k p_jk x_jk,
    var_i = sum_j omega_ji [ v_j(i) + (m_j(i) - z_i)^2 ],   v_j = sum_k p_jk (x_jk - m_j)^2,

the overlap average of the patches' mixture variances plus the spread of the overlapping
patch means about their average (computed as sum_j omega_ji sum_k p_jk (x_jk(i) - z_i)^2,
without the cancellation of E[x^2] - z^2). With one cone, v_j = 0 and z is the image of
``uncertainty=False``: only the overlap term is left, zero where a single patch covers a
pixel or all covering patches agree. ``std = sqrt(var)``. With ``output="data"`` the data
step after z is per pixel for a mask or the identity, u_i = (M_i v_i + alpha z_i) /
(M_i^2 + alpha), so the std passes through exactly, times alpha / (M_i^2 + alpha) (0 on
noiselessly observed pixels); other operators mix pixels and need ``output="prior"``. The
map is the spread of the patch model at the last iterate: it says where the cones and the
overlapping patches disagree about u_{n-1}, not how far the data determine each pixel.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from conejax import _checks, _nnls, _refine, _scale, solvers
from conejax import patches as _patches
from conejax._patch_cones import PatchCones, code_size, posterior_patches, project_patches
from conejax.operators import (LinearOperator, blur, identity, per_pixel_gain,
                               regularised_least_squares)

SIGMA_MIN = 0.005  # the lowest default prior level, per unit of data range (noiseless problems)
SIGMA_START = 0.1  # the first default prior level, per unit of data range
OUTPUTS = ("prior", "data")
WEIGHTS = ("uniform", "sparsity")


def _aggregate(P, nnz, geometry, weights):
  """The overlap average (N, H W) of patches P (N, n, p q), each patch weighted by
  1 / (1 + nnz) (nnz (N, n)) with ``weights="sparsity"``, by 1 with "uniform"."""
  if weights == "uniform":
    return jax.vmap(lambda P: _patches.average_flat(P, *geometry))(P)
  w = (1 / (1 + nnz.astype(P.dtype)))[..., None]
  add = jax.vmap(lambda P: _patches.overlap_add_flat(P, *geometry))
  return add(w * P) / add(jnp.broadcast_to(w, P.shape))


def _image_patches(U, geometry):
  """The patches (N, n, p q) of the flat images U (N, H W)."""
  return jax.vmap(lambda u: _patches.extract_flat(u, *geometry))(U)


def _prior_step(pc, U, mu, codes, geometry, weights, solver, reweight):
  """Overlap-averaged patch-cone projections of the images U (N, H W), and every cone's
  codes (K, N n, code size) of their patches, the solves warm-started from ``codes``."""
  X = _image_patches(U, geometry)
  (N, n, m), mu = X.shape, jnp.repeat(mu, X.shape[1])[:, None]  # each image's mu per patch
  P, nnz, codes = project_patches(pc, X.reshape(N * n, m), mu, solver=solver,
                                  reweight=reweight, codes=codes)
  return _aggregate(P.reshape(N, n, m), nnz.reshape(N, n), geometry, weights), codes


def _posterior_step(pc, U, mu, codes, temperature, geometry, weights, solver, reweight):
  """The posterior prior step of the images U (N, H W): mean and variance (N, H W).

  Pixel i's law is the mixture over the patches j covering it (overlap weights
  omega_ji = w_j / sum_j' w_j') and, within each, over the cones (p_jk): mean
  z_i = sum_j omega_ji sum_k p_jk x_jk(i), variance sum_j omega_ji sum_k p_jk
  (x_jk(i) - z_i)^2, computed in two passes (no cancellation of E[x^2] - z^2)."""
  X = _image_patches(U, geometry)
  N, n, m = X.shape
  per_patch = lambda a: jnp.repeat(a, n)
  dc, fits, p, nnz = posterior_patches(pc, X.reshape(N * n, m), per_patch(mu)[:, None],
                                       per_patch(temperature), solver=solver,
                                       reweight=reweight, codes=codes)
  # With one cone p = 1 exactly: the plain prior step's arithmetic, so the same image (to
  # rounding: this step is compiled outside the loop).
  mean = dc + (fits[0] if fits.shape[0] == 1 else jnp.sum(p[..., None] * fits, axis=0))
  nnz = nnz.reshape(N, n)
  Z = _aggregate(mean.reshape(N, n, m), nnz, geometry, weights)
  deviation = dc[None] + fits - _image_patches(Z, geometry).reshape(1, N * n, m)  # (K, N n, m)
  spread = jnp.sum(p[..., None] * deviation**2, axis=0).reshape(N, n, m)
  return Z, _aggregate(spread, nnz, geometry, weights)


def _data_gain(A, alpha, dtype):
  """d u_i / d z_i (H W,) of a per-pixel data step (a mask, the identity): its map z -> u is
  diagonal, so the variance of z passes through it exactly, pixel by pixel."""
  M = per_pixel_gain(A, dtype)
  denominator = M * M + alpha
  return jnp.where(denominator > 0, alpha / jnp.where(denominator > 0, denominator, 1), 1)


_STATIC = ("geometry", "cg_iter", "output", "weights", "solver", "reweight", "uncertainty")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _restore(pc, V, A, levels, alphas, tau, init, temperature, *, geometry, cg_iter, output,
             weights, solver, reweight, uncertainty):
  # levels and alphas are (n_iter, N): each image's schedule is in its own units.
  data = jax.vmap(lambda v, z, x0, alpha: regularised_least_squares(A, v, z, alpha,
                                                                     cg_iter=cg_iter, x0=x0))
  tiny_alpha = alphas[0] * 1e-3
  U = data(V, init, init, tiny_alpha)
  # Each iteration's patch codes warm-start the next one's solves (the same patches of a
  # nearby image): the same exact codes, with fewer active-set pivots.
  n_patches = V.shape[0] * _patches.n_patches(*geometry)
  codes = jnp.zeros((pc.W.shape[0], n_patches, code_size(pc)), V.dtype)

  def step(k, state):
    U, _, codes = state
    Z, codes = _prior_step(pc, U, tau * levels[k], codes, geometry, weights, solver, reweight)
    # CG starts at z: with alpha = 0 (noiseless data) the system A^T A u = A^T v has many
    # solutions and CG from z converges to the one nearest z, the projection of z onto
    # {A u = v}; started elsewhere the prior would never enter the data step.
    return data(V, Z, Z, alphas[k]), Z, codes

  n = levels.shape[0]
  if not uncertainty:
    U, Z, _ = lax.fori_loop(0, n, step, (U, U, codes))
    return Z if output == "prior" else U
  # The first n - 1 steps as without uncertainty; the last prior step is the posterior one.
  if n > 1:
    U, _, codes = lax.fori_loop(0, n - 1, step, (U, U, codes))
  Z, var = _posterior_step(pc, U, tau * levels[-1], codes, temperature, geometry, weights,
                           solver, reweight)
  if output == "prior":
    return Z, var
  gain = jax.vmap(lambda alpha: _data_gain(A, alpha, V.dtype))(alphas[-1])
  return data(V, Z, Z, alphas[-1]), gain**2 * var


class Restoration(NamedTuple):
  """A restored image and its per-pixel uncertainty (``restore(..., uncertainty=True)``).

  Attributes:
    image: (H, W) or (N, H, W) restored image (the posterior mean of the last prior step
      with ``output="prior"``, the data step after it with ``output="data"``).
    std: the same shape, the per-pixel standard deviation of the posterior mixture of
      patches and cones (see ``restore``).
  """
  image: jax.Array
  std: jax.Array


def _normalised_convolution(A, V, image_shape, std=2.0):
  """The default start: G * (A^T v) / G * (A^T A 1), G a Gaussian of std 2 pixels (for a
  mask, the observed pixels smoothly interpolated; for pooling, a smooth upsampling); the
  mean intensity where the denominator vanishes."""
  t = np.arange(-3, 4)
  g = np.exp(-0.5 * (t / std) ** 2)
  G = blur(np.outer(g, g) / np.sum(g) ** 2, image_shape, boundary="reflect")
  weight = G.mv(A.T.mv(A.mv(jnp.ones(A.in_size, V.dtype))))
  numerator = jax.vmap(lambda v: G.mv(A.T.mv(v)))(V)
  mean = jnp.sum(numerator, axis=1, keepdims=True) / jnp.maximum(jnp.sum(weight), 1e-30)
  ok = weight > 1e-3 * jnp.max(weight)
  return jnp.where(ok[None], numerator / jnp.where(ok, weight, 1)[None], mean)


def _check_count(value, name):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f"{name} must be an integer >= 0; got {value!r}.")
  return int(value)


def _check_scalar(x, name, fix, positive=False):
  if jnp.ndim(x) != 0:
    raise ValueError(f"{name} must be a scalar; got shape {jnp.shape(x)}. {fix}")
  if _checks.is_concrete(x):
    value = float(x)
    if not np.isfinite(value) or value < 0 or (positive and value == 0):
      raise ValueError(f"{name} must be finite and {'> 0' if positive else '>= 0'}; got "
                       f"{value}. {fix}")
  return jnp.asarray(x)


def restore(cones: PatchCones, v, A: LinearOperator | None = None, *, image_shape, sigma,
            n_iter: int = 8, sigma_start=None, sigma_end=None, tau=1.5, lam=1.0, stride=2,
            cg_iter: int = 20, weights: str = "sparsity", output: str = "prior", init=None,
            reweight: int = 0, solver="auto", data_range=None, uncertainty: bool = False,
            temperature=None, refine=None) -> jax.Array | Restoration:
  """Restores images from v = A u + noise by HQS with a patch-cone prior.

  See the module docstring for the iteration and the schedule of the coupling weight.

  Args:
    cones: ``PatchCones`` from ``conejax.fit_patch_cones``.
    v: (k,) observation of one image, or (N, k) of N images under the same operator; for
      one operator per image, ``jax.vmap`` over (A, v).
    A: operator from (H W,) to (k,); None is the identity (denoising).
    image_shape: (H, W) of the restored image.
    sigma: noise standard deviation of v (0 for noiseless observations).
    n_iter: HQS iterations (prior steps).
    sigma_start: first prior level s_1 (default max(sigma, 0.1 data_range)); larger
      fills more.
    sigma_end: last prior level s_n (default max(sigma, 0.005 data_range)).
    tau: penalty of the codes per unit of prior level, mu_k = tau s_k.
    lam: multiplies the coupling weight alpha_k = lam sigma^2 / s_k^2.
    stride: of the patch corners in the prior step (1: every patch, slower).
    cg_iter: conjugate-gradient steps per data step (ignored for masks).
    weights: "sparsity" (1 / (1 + nnz) per patch) or "uniform" overlap averaging.
    output: "prior" (the last prior step) or "data" (the data step after it).
    init: (H W,) or (N, H W) starting point of the first data step; default the
      normalised convolution G (A^T v) / G (A^T A 1) with a Gaussian G of std 2 pixels.
    reweight: reweighted-L1 passes of the patch codes (0: plain L1; see
      ``conejax._patch_cones.project_patches``).
    solver: NNLS solver of the patch codes, as in ``conejax.nnls``; "auto" is the exact
      ``ActiveSet`` started from the previous step's codes alone (``warm_start=0``: no APG
      steps in between).
    data_range: the range of the image's values (e.g. 1 for images in [0, 1], 255 for
      8-bit values), which sets the default prior levels; None takes, per image, the
      largest |value| of the first estimate u_0 (see ``init``).
    uncertainty: also return a per-pixel standard deviation: the last prior step becomes
      the posterior mixture over the cones and the overlapping patches (see the module
      docstring for the formula); with ``output="data"``, only for a mask or the identity.
    temperature: () > 0, in squared units of v: the temperature T of the cones' posterior
      p_jk = softmax_k(-J_jk / T) (only with ``uncertainty=True``); None is s_n^2, the last
      prior level squared. Small T approaches the best cone (the plain image), large T
      weighs the cones equally.
    refine: None, or a refinement of the restored image by v (``conejax.Blend``,
      ``conejax.Keep`` or ``conejax.Fill`` with ``image_shape``; see ``conejax.refine``),
      applied last, in v's units; not with ``uncertainty=True``. The data step already
      blends with the data (``output="data"``); ``Fill`` suits noiseless masks with
      ``output="prior"`` (after the data step of noiseless data the observed pixels already
      equal v and Fill has no misfit to spread).

  Returns:
    (H, W) image, or (N, H, W) for a batch; the dtype of v. With ``uncertainty=True`` a
    ``Restoration(image, std)`` of two such arrays.

  Raises:
    ValueError: if the shapes of v, A and image_shape disagree, a patch does not fit the
      image, sigma, tau, lam or temperature are negative, an option is unknown,
      ``temperature`` is given without ``uncertainty=True``, or ``uncertainty=True`` with
      ``output="data"`` for an operator other than a mask or the identity, or for a
      refinement that does not apply to A (see ``conejax.refine``) or with uncertainty.

  Example:
    >>> import jax, numpy as np, conejax
    >>> images = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    >>> pc = conejax.fit_patch_cones(images, 4, key=jax.random.key(0), rank=8)
    >>> conejax.restore(pc, images[0].reshape(-1), image_shape=(16, 16), sigma=0.1).shape
    (16, 16)
    >>> image, std = conejax.restore(pc, images[0].reshape(-1), image_shape=(16, 16),
    ...                              sigma=0.1, uncertainty=True)
    >>> std.shape, bool((std >= 0).all())
    ((16, 16), True)
  """
  if not isinstance(cones, PatchCones):
    raise ValueError(f"cones must be PatchCones from conejax.fit_patch_cones; got "
                     f"{type(cones).__name__}.")
  geometry = _patches.check_geometry(image_shape, cones.patch_shape, stride)
  (H, W), m = geometry[0], geometry[0][0] * geometry[0][1]
  source = "A's output"
  if A is None:
    A, source = identity(m), f"the pixels of image_shape {(H, W)}"
  if not isinstance(A, LinearOperator):
    raise ValueError(f"A must be a conejax.operators LinearOperator; got {type(A).__name__}.")
  if A.in_size != m:
    raise ValueError(f"A maps signals of size {A.in_size}, but image_shape {(H, W)} has {m} "
                     "pixels; build A for the image's shape (flattened row-major).")
  V = _checks.as_float_array(v, "v")
  if V.ndim not in (1, 2) or V.shape[-1] != A.out_size:
    raise ValueError(f"v must have shape ({A.out_size},) or (N, {A.out_size}), {source}; "
                     f"got {tuple(V.shape)}.")
  _checks.check_finite(V, "v")
  single = V.ndim == 1
  V = V[None] if single else V
  n_iter = _checks.check_positive_int(n_iter, "n_iter")
  cg_iter = _checks.check_positive_int(cg_iter, "cg_iter")
  _checks.check_choice(output, "output", OUTPUTS)
  _checks.check_choice(weights, "weights", WEIGHTS)
  if not isinstance(uncertainty, (bool, np.bool_)):
    raise ValueError(f"uncertainty must be True or False; got {uncertainty!r}.")
  if temperature is not None and not uncertainty:
    raise ValueError("temperature goes with uncertainty=True (the posterior over the cones); "
                     "pass uncertainty=True, or drop temperature.")
  if temperature is not None:
    temperature = _check_scalar(temperature, "temperature", "The posterior temperature, in "
                                "squared units of v (default sigma_end^2).", positive=True)
  if uncertainty and output == "data" and per_pixel_gain(A) is None:
    raise ValueError(f"uncertainty=True with output='data' needs a per-pixel data step (a "
                     f"mask or the identity); for {type(A).__name__} the data step mixes "
                     "pixels and the std of the prior step does not pass through it. Pass "
                     "output='prior'.")
  if refine is not None:
    if uncertainty:
      raise ValueError("refine changes the image but not its std: with uncertainty=True "
                       "restore without refine.")
    _refine.check_refinement(refine, A, m)
  observed = V
  fix = "Pass the noise standard deviation of v, in its units."
  sigma = _check_scalar(sigma, "sigma", fix).astype(V.dtype)
  tau = _check_scalar(tau, "tau", "It scales the code penalty mu = tau * level.").astype(V.dtype)
  lam = _check_scalar(lam, "lam", "It scales the coupling weight.", positive=True).astype(V.dtype)
  # Each image is solved at unit scale: v, sigma and every level divided by a power of two
  # near max |v| (exact), the result multiplied back; float32 squares (CG's inner products,
  # the patch objectives) stay in range from 1e-30 to 1e30.
  e = _scale.exponent_of(V, axis=1)                                      # (N,)
  unit = lambda x: jnp.ldexp(jnp.broadcast_to(jnp.asarray(x, V.dtype), e.shape), -e)
  V = jnp.ldexp(V, -e[:, None])
  if init is None:
    init = _normalised_convolution(A, V, (H, W))
  else:
    init = _checks.as_float_array(init, "init").astype(V.dtype)
    init = jnp.ldexp(jnp.broadcast_to(init.reshape(-1, m), (V.shape[0], m)), -e[:, None])
  if data_range is None:
    span = jnp.max(jnp.abs(init), axis=1)
    span = jnp.where(span > 0, span, 1)  # an all-zero estimate: any level restores zeros
  else:
    span = unit(_check_scalar(data_range, "data_range", "The range of the image's values, "
                              "e.g. 1 for [0, 1] images.", positive=True))
  sigma = unit(sigma)

  def level(value, name, default):
    if value is None:
      return jnp.maximum(sigma, default * span)
    which = "first" if name == "sigma_start" else "last"
    return unit(_check_scalar(value, name, f"The {which} prior level.", positive=True))

  start = level(sigma_start, "sigma_start", SIGMA_START)
  end = level(sigma_end, "sigma_end", SIGMA_MIN)
  t = jnp.linspace(0, 1, n_iter, dtype=V.dtype)[:, None]
  levels = jnp.exp((1 - t) * jnp.log(start)[None] + t * jnp.log(end)[None])  # (n_iter, N)
  alphas = lam * (sigma[None] / levels) ** 2
  d = cones.W.shape[-1] * (2 if cones.signed else 1)
  auto = isinstance(solver, str) and solver == "auto"
  solver, _ = _nnls.check_options(solver, max_iter=None, tol=None, batch_size=2048,
                                  differentiation="implicit", n_atoms=d)
  if auto and isinstance(solver, solvers.ActiveSet):
    # The previous step's codes are the start: the APG warm start would only move away
    # from them (a 32-step inpainting of a 128 x 128 crop: 29.0 -> 23.5 s, the same image).
    solver = dataclasses.replace(solver, warm_start=0)
  pc = jax.tree_util.tree_map(lambda x: x.astype(V.dtype), cones)
  if temperature is None:
    temperature = levels[-1] ** 2  # (N,): the last prior level's variance, at unit scale
  else:
    temperature = jnp.ldexp(jnp.broadcast_to(temperature.astype(V.dtype), e.shape), -2 * e)
  out = _restore(pc, V, A, levels, alphas, tau, init, temperature, geometry=geometry,
                 cg_iter=cg_iter, output=output, weights=weights, solver=solver,
                 reweight=_check_count(reweight, "reweight"), uncertainty=bool(uncertainty))

  def as_images(x):  # back to the images' units and shape
    x = jnp.ldexp(x, e[:, None]).reshape(-1, H, W)
    return x[0] if single else x

  if not uncertainty:
    if refine is None:
      return as_images(out)
    image = _refine.apply_refinement(refine, observed, jnp.ldexp(out, e[:, None]), A,
                                     per_sample=False)  # in v's units
    return image.reshape(H, W) if single else image.reshape(-1, H, W)
  image, var = out
  positive = var > 0
  std = jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1)), 0)
  return Restoration(as_images(image), as_images(std))
