"""Inverse problems and source separation with pretrained cones.

One dictionary W (m, d), never retrained, solves every linear inverse problem
v = A u + noise: the observation v (k,) is coded on the cone of A W, formed implicitly by
applying the operator A (m -> k, see ``conejax.operators``) to each atom,

    h* = argmin_{h >= 0} 0.5 ||A W h - v||^2 + mu_h sum(h)    (loss="l2", Gaussian noise)
    h* = argmin_{h >= 0} ||A W h - v||_1 + mu_h sum(h)        (loss="l1", impulsive noise)

and the estimate is u = W h*. Samples are rows: V is (..., k). With K stacked cones
(``Cones`` or W of shape (K, m, d)) every sample is coded on every cone (``select="each"``),
on the cone that explains it best (``"best"``), on the union of all atoms (``"union"``), or
on every cone with the estimates weighed by each cone's posterior probability
(``"posterior"``: the mixture's mean and per-pixel standard deviation).
Source separation codes a mixture on the union and splits it cone by cone.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from conejax import (_checks, _cone, _divergence, _loops, _nmf, _nmf_checks, _nmf_steps, _nnls,
                     _posterior, _refine, solvers)
from conejax._cone import Cones, check_temperature
from conejax.operators import _base as operators

_HIGHEST = lax.Precision.HIGHEST
LOSSES = ("l2", "l1")
SELECTS = ("each", "best", "union", "posterior")
VARIANCES = ("mixture", "total")


class Reconstruction(NamedTuple):
  """Estimates of the signals behind a batch of observations.

  Attributes:
    u: (..., m) estimates W h*, or (..., K, m) with ``select="each"`` on K cones; with
      "posterior" the posterior mean sum_k p_k W_k h_k.
    h: (..., d) codes ((..., K, d) for "each" and "posterior", (..., K d) for "union").
    misfit: (...) or (..., K) data fit at h*: 0.5 ||A W h - v||^2 (l2) or ||A W h - v||_1 (l1).
    cone: (...) int32 index of the cone used with ``select="best"``, of the most probable
      cone with "posterior"; -1 otherwise.
    converged: (...) or (..., K) bool, whether each solve met its stopping test (with
      "posterior", whether all K did).
    std: (..., m) per-pixel standard deviation with ``select="posterior"``; None otherwise.
      ``variance="mixture"``: the spread of the mixture, sqrt(sum_k p_k (W_k h_k - u)^2);
      ``"total"``: sqrt(spread^2 + sum_k p_k s_k^2), s_k^2 each cone's own variance (see
      ``reconstruct``).
  """
  u: jax.Array
  h: jax.Array
  misfit: jax.Array
  cone: jax.Array
  converged: jax.Array
  std: jax.Array | None = None


def _as_stack(dictionary, mu_h):
  """(K, m, d) dictionaries and mu_h from ``Cones`` or an (m, d) / (K, m, d) array."""
  if isinstance(dictionary, Cones):
    return dictionary.W, dictionary.mu_h if mu_h is None else mu_h, False
  W = _checks.as_float_array(dictionary, "W")
  _checks.check_ndim(W, "W", (2, 3), "(m, d) or (K, m, d)")
  _checks.check_finite(W, "W")
  return (W[None] if W.ndim == 2 else W), 0.0 if mu_h is None else mu_h, W.ndim == 2


def _misfit(residual, loss, weights=None):
  """sum_j M_j |r_j| (l1) or 0.5 sum_j M_j r_j^2 (l2) over the last axis (M = 1 for None)."""
  fit = jnp.abs(residual) if loss == "l1" else 0.5 * residual**2
  return jnp.sum(fit if weights is None else weights * fit, axis=-1)


def _solve_shared(B, V, mu, loss, options, weights=None):
  """Codes V (n, k) on one (k, d) dictionary B shared by every sample: ``NNLSResult``.

  With entry weights M (n, k): l2 by the weighted Gram form of ``_nnls.solve_dictionary``
  (exact, one Gram B^T diag(m) B per sample); l1 on each sample's own diag(m) B and m v
  (sum_j m_j |(B h - v)_j| = ||diag(m) (B h - v)||_1), ``options``' batch_size at a time."""
  if weights is not None and loss == "l1":
    one = dict(options, batch_size=1)
    single = lambda v, m: _solve_shared(m[:, None] * B, (m * v)[None], mu, loss, one)
    out = _loops.in_chunks(lambda a: jax.vmap(single)(*a), (V, weights), options["batch_size"])
    return jax.tree.map(lambda x: x[:, 0], out)
  if loss == "l1":
    return solvers.solve(options["solver"], solvers.L1Problem(B, V, mu),
                         batch_size=options["batch_size"])
  # weighted or not, one path: the same products, so all-ones weights give the same codes
  return _nnls.solve_dictionary(B, V, mu, jnp.zeros(V.shape[:1] + B.shape[1:], V.dtype),
                                weights, **options)


def _lipschitz_estimate(gram, shape, dtype, n_iter=30, safety=1.1):
  """Per-sample top eigenvalue of a matrix-free Gram map by power iteration, times ``safety``.

  The Gram maps here (W^T A_i^T A_i W with W >= 0) are entrywise non-negative for masks, so
  the iteration from a positive start converges quickly; the margin covers the rest.
  """
  def body(_, x):
    y = gram(x)
    return y / jnp.maximum(jnp.linalg.norm(y, axis=-1, keepdims=True), jnp.finfo(dtype).tiny)

  x = lax.fori_loop(0, n_iter, body, jnp.ones(shape, dtype) / jnp.sqrt(shape[-1]))
  top = jnp.linalg.norm(gram(x), axis=-1)
  return safety * jnp.maximum(top, jnp.finfo(dtype).tiny)


def _solve_per_sample(A, W, V, mu, loss, options, chunk, weights=None):
  """Codes each row of V (n, k) on its own A_i W: the operator's leaves carry a sample axis.

  l2: matrix-free accelerated projected gradient, the whole batch at once; each iteration
  applies W, every A_i, every A_i^T and W^T (two matrix products), never a per-sample Gram.
  l1: A_i W is formed per sample, ``chunk`` samples at a time. Entry weights M (n, k) of V
  enter as diag(sqrt(m)) A_i (l2) or diag(m) A_i (l1), and v as sqrt(m) v or m v.
  """
  if loss == "l2":
    root = jnp.ones_like(V) if weights is None else _cone.sqrt_weights(weights)
    forward = lambda H: root * jax.vmap(lambda A_i, u: A_i.mv(u))(A, jnp.dot(
        H, W.T, precision=_HIGHEST))
    adjoint = lambda R: jnp.dot(jax.vmap(lambda A_i, r: A_i.T.mv(r))(A, root * R), W,
                                precision=_HIGHEST)
    gram = lambda H: adjoint(forward(H))
    C = adjoint(root * V)
    lipschitz = _lipschitz_estimate(gram, C.shape, C.dtype)
    problem = solvers.QuadraticProblem(gram, C, mu, lipschitz)
    out = solvers.solve(options["solver"], problem, differentiation=options["differentiation"])
    return out.h, out.converged
  one = dict(options, batch_size=1)
  weights = jnp.ones_like(V) if weights is None else weights

  def single(A_i, v, m):
    B = m[:, None] * operators.apply_to_dictionary(A_i, W)
    out = _solve_shared(B, (m * v)[None], mu, loss, one)
    return out.h[0], out.converged[0]

  return _loops.in_chunks(lambda a: jax.vmap(single)(*a), (A, V, weights), chunk)


_NO_GRAD_L1 = ("reconstruct(loss='l1') is not differentiable (its primal-dual iterations run "
               "in a while_loop); differentiate loss='l2', or wrap the call in "
               "jax.lax.stop_gradient.")
def _guarded(fn, loss):
  """``fn`` whose ``grad`` raises a clear ``TypeError`` for the l1 loss, which cannot
  differentiate. (Per-sample operators under the implicit route get the solver driver's
  own ``ValueError`` naming differentiation='unroll'.)"""
  return _checks.not_differentiable(fn, _NO_GRAD_L1) if loss == "l1" else fn


@functools.partial(jax.jit, static_argnames=("loss", "select", "per_sample", "options",
                                             "chunk", "variance"))
def _reconstruct(W, V, A, mu, temperature, weights, *, loss, select, per_sample, options,
                 chunk, variance="mixture"):
  options = dict(options)
  K, m, d = W.shape
  if select == "union":
    W = jnp.transpose(W, (1, 0, 2)).reshape(1, m, K * d)
  guard = functools.partial(_guarded, loss=loss)
  # One cone at a time by lax.map: one solver in the compiled program, whatever K.
  if per_sample:
    solve = guard(lambda A, W_k, V, mu, M: _solve_per_sample(A, W_k, V, mu, loss, options,
                                                              chunk, M))
    h, converged = lax.map(lambda W_k: solve(A, W_k, V, mu, weights), W)
    h, converged = jnp.moveaxis(h, 0, -2), jnp.moveaxis(converged, 0, -1)
    AU = jax.vmap(lambda A_i, u: operators.apply(A_i, u))(A, jnp.einsum(
        "nkd,kmd->nkm", h, W, precision=_HIGHEST))
  else:
    B = jax.vmap(operators.apply_to_dictionary, (None, 0))(A, W)
    solve = guard(lambda B_k, V, mu, M: tuple(_solve_shared(B_k, V, mu, loss, options,
                                                            M)[::3]))
    h, converged = lax.map(lambda B_k: solve(B_k, V, mu, weights), B)
    h, converged = jnp.moveaxis(h, 0, -2), jnp.moveaxis(converged, 0, -1)
    AU = jnp.einsum("nkd,kcd->nkc", h, B, precision=_HIGHEST)
  U = jnp.einsum("nkd,kmd->nkm", h, W, precision=_HIGHEST)
  misfit = _misfit(AU - V[:, None], loss, None if weights is None else weights[:, None])
  within = None
  if select == "posterior" and variance == "total":
    within = _posterior.within_variances(W, None if per_sample else B, A, h, misfit,
                                         weights, per_sample, chunk)
  return _select(U, h, misfit, converged, mu, temperature, loss=loss, select=select,
                 within=within)


def _select(U, h, misfit, converged, mu, temperature, *, loss, select, within=None):
  """The ``Reconstruction`` of ``select`` from the estimates U (n, K, m), codes h (n, K, d),
  misfits and convergence (n, K) on every cone; ``within`` (n, K, m), each cone's own
  variance, joins the posterior's by the law of total variance."""
  none = jnp.full(U.shape[:1], -1, jnp.int32)
  if select == "each":
    return Reconstruction(U, h, misfit, none, converged)
  if select == "union":
    return Reconstruction(U[:, 0], h[:, 0], misfit[:, 0], none, converged[:, 0])
  if select == "posterior":
    p = _posterior.posterior_weights(misfit, temperature, loss)
    mean, std = _posterior.mixture(U, p, within)
    return Reconstruction(mean, h, misfit, jnp.argmax(p, -1).astype(jnp.int32),
                          jnp.all(converged, -1), std)
  objective = misfit + mu * jnp.sum(h, axis=-1)
  best = jnp.argmin(objective, axis=-1).astype(jnp.int32)
  pick = lambda x: jnp.take_along_axis(x, best.reshape((-1, 1) + (1,) * (x.ndim - 2)), 1)[:, 0]
  converged = jnp.take_along_axis(converged, best[:, None], 1)[:, 0]
  return Reconstruction(pick(U), pick(h), pick(misfit), best, converged)


@functools.partial(jax.jit, static_argnames=("select", "beta", "max_iter", "tol"))
def _reconstruct_beta(W, V, A, mu, temperature, widths, weights, *, select, beta, max_iter,
                      tol):
  """``reconstruct`` under D_beta: ``_nmf_steps.multiplicative_codes`` on every cone
  (lax.map), each observation on its own (its unit scale, start and stopping test),
  weighted by the entry weights of V if any."""
  K, m, d = W.shape
  if select == "union":
    W, widths = jnp.transpose(W, (1, 0, 2)).reshape(1, m, K * d), jnp.sum(widths)[None]
  def one(args):
    W_k, d_k = args
    forward = lambda H: jax.vmap(A.mv)(jnp.dot(H, W_k.T, precision=_HIGHEST))
    adjoint = lambda R: jnp.dot(jax.vmap(A.T.mv)(R), W_k, precision=_HIGHEST)
    H, n_iter = _nmf_steps.multiplicative_codes(forward, adjoint, V, mu, d_k, beta=beta,
                                                max_iter=max_iter, tol=tol, weights=weights)
    return H, (n_iter < max_iter) | (tol == 0)  # tol = 0 asks for every update

  h, stopped = lax.map(one, (W, widths))
  h, converged = jnp.moveaxis(h, 0, 1), stopped.T
  U = jnp.einsum("nkd,kmd->nkm", h, W, precision=_HIGHEST)
  AU = jax.vmap(A.mv)(U.reshape(-1, m)).reshape(U.shape[:2] + (V.shape[-1],))
  V = jnp.where(jnp.any(V < 0, axis=1, keepdims=True), jnp.nan, V)  # (unchecked under jit)
  misfit = _divergence.divergences(V[:, None], AU, beta,
                                   None if weights is None else weights[:, None])
  return _select(U, h, misfit, converged, mu, temperature, loss="l2", select=select)


def _check_beta(beta, W, V, A, loss, per_sample_operator, options, weighted):
  """(max_iter, tol) for ``reconstruct`` under a beta-divergence, or a ValueError."""
  if loss != "l2":
    raise ValueError(f"loss={loss!r} cannot go with beta_loss {beta:g}: the beta-divergence is "
                     "the data fit; pass loss='l2' (the default) with it, or "
                     "beta_loss='frobenius' for the L1 fit.")
  if per_sample_operator:
    raise ValueError(f"beta_loss {beta:g} takes one operator shared by all samples; "
                     "per_sample_operator=True serves beta_loss='frobenius' only.")
  max_iter, tol = _divergence.multiplicative_options(beta, options, "reconstruct")
  _divergence.check_data(V, "V", beta, weighted)
  if all(map(_checks.is_concrete, [W, V, *jax.tree.leaves(A)])):
    B = jax.vmap(operators.apply_to_dictionary, (None, 0))(A, W)
    if bool(jnp.any(B < -1e-6 * jnp.max(jnp.abs(B)))):
      raise ValueError(f"beta_loss {beta:g} needs A W >= 0 (an operator that keeps the atoms "
                       "non-negative, as masks, blurs and pooling do); this A makes atoms "
                       "negative. Use beta_loss='frobenius' with it.")
  return max_iter, tol


def reconstruct(dictionary, V, A=None, *, mu_h=None, loss: str = "l2", select: str = "each",
                per_sample_operator: bool = False, max_iter: int | None = None,
                tol: float | None = None, batch_size: int = 2048, chunk_size: int = 64,
                differentiation: str = "implicit", solver="auto",
                temperature=None, beta_loss=None, weights=None,
                missing: str | None = None, variance: str = "mixture",
                refine=None) -> Reconstruction:
  """Reconstructs signals u from observations v = A u + noise by projecting onto cone(A W).

  Solves h* = argmin_{h >= 0} 0.5 ||A W h - v||^2 + mu_h sum(h) (``loss="l2"``) or
  ||A W h - v||_1 + mu_h sum(h) (``loss="l1"``, robust to salt-and-pepper noise) and
  returns u = W h*. A W is formed by applying A to the atoms; A is never a matrix.

  Missing values: with entry weights M of V in [0, 1] (0 = missing, as in ``conejax.nmf``;
  ``missing="nan"`` gives NaN entries weight 0) the data fit is weighted,
  0.5 sum_j M_j (A W h - v)_j^2 (the NNLS through diag(sqrt(M)), exact by its own Gram
  per sample with a shared operator; ``sum_j M_j |.|_j`` for l1, sum_j M_j d_beta under a
  beta-divergence), and so is ``misfit``; u = W h* is the full signal, so
  ``reconstruct(cones, X, weights=M).u`` imputes the missing entries of X (A the identity).
  All-ones weights give the unweighted result.

  Args:
    dictionary: ``Cones``, or a dictionary W of shape (m, d) or (K, m, d).
    V: (k,) or (N, k) observations, samples as rows.
    A: operator from (m,) to (k,) (``conejax.operators``); None is the identity (denoising).
      With ``per_sample_operator=True`` its array leaves carry a leading sample axis N
      (e.g. ``jax.vmap(operators.mask)(M)`` for one mask per sample).
    mu_h: L1 weight of the codes >= 0; None takes the cones' own (0 for an array).
    loss: "l2" (least squares, ``conejax.nnls``) or "l1" (least absolute deviations,
      ``conejax.nnls_l1``).
    select: with K cones, "each" codes on every cone, "best" keeps per sample the cone of
      smallest objective, "union" codes once on all K d atoms together, "posterior" codes
      on every cone and returns the posterior mean sum_k p_k W_k h_k and per-pixel standard
      deviation (``std``), p = softmax(-D^2 / temperature) with D_k^2 = ||A W_k h_k - v||^2
      (the probabilities of ``predict_proba(cones, v, A=A, temperature=temperature)``;
      softmax(-||A W_k h_k - v||_1 / temperature) for the l1 loss).
    per_sample_operator: whether A holds one operator per sample. With the l2 loss these
      are solved matrix-free (step sizes from 30 power iterations with a 10% margin).
    max_iter: iteration cap of a named solver; None is its default.
    tol: tolerance of a named iterative solver; None is its default.
    batch_size: samples per solver chunk (shared operator).
    chunk_size: samples coded at once with per-sample operators and the l1 loss.
    differentiation: how ``grad`` goes through the l2 solution, with respect to V, W, mu_h
      and the operator's arrays: "implicit" (KKT conditions on the active set; not for
      per-sample operators) or "unroll" (exactly ``max_iter`` steps, reverse mode through
      each). The l1 loss is not differentiable.
    solver: a ``conejax.solvers`` object or name. "auto" (default) is the exact
      ``ActiveSet`` for the l2 loss with one operator, matrix-free ``APG`` for per-sample
      operators (or ``differentiation="unroll"``) and ``PDHG`` for the l1 loss; "apg" and
      "admm" are the iterative alternatives for the shared-operator l2 loss.
    temperature: () > 0, required by ``select="posterior"`` (only): from
      ``conejax.calibrate``, or 2 sigma^2 for Gaussian noise of standard deviation sigma
      (the likelihood exp(-||A u - v||^2 / (2 sigma^2))).
    variance: what ``std`` of ``select="posterior"`` measures. "mixture" (default): the
      spread of the cones' estimates about their mean, sum_k p_k (W_k h_k - u)^2, which
      says which pixels the cones disagree on. "total" (l2 loss, Frobenius): the law of
      total variance, the spread plus sum_k p_k s_k^2, with s_k^2 the per-pixel variance
      of cone k's least-squares estimate on its active set S = {h_k > 0},
      diag(W_S (B_S^T M B_S + eps I)^{-1} W_S^T) sigma_k^2, B = A W_k, M the entry weights,
      sigma_k^2 = ||A W_k h_k - v||_M^2 / max(n - |S|, 1) the noise variance estimated from
      the residual (n: the weight of the entries A W_k reaches) and eps = sqrt(machine
      epsilon) max diag(B^T M B); an observation the cones fit badly gets a large variance.
      It costs one d x d Cholesky per sample and cone (``chunk_size`` samples at a time).
    beta_loss: None (the cones' own loss, as ``codes``; Frobenius for an array), or a loss
      as in ``conejax.nmf``. Under a beta-divergence the codes minimise
      D_beta(v | A W_k h) + mu_h sum(h) by multiplicative updates
      (``_nmf_steps.multiplicative_codes``, matrix-free: A.mv and A^T only, as ``nmf_codes`` does
      them with A the identity), ``misfit`` is D_beta(v | A W_k h_k) (0.5 ||.||^2 for
      beta = 2; "best" minimises it plus mu_h sum(h), "posterior" weighs by
      exp(-2 misfit / T)); V and A W must be non-negative, only ``max_iter`` (default 200)
      and ``tol`` (1e-5) apply, and ``loss="l1"`` and per-sample operators do not.
    weights: None, or (k,) / (N, k) weights in [0, 1] of the entries of V (0 = missing).
    missing: None, or "nan": NaN entries of V are missing (weight 0).
    refine: None, or a refinement of each estimate by its observation (``u`` is then the
      refined estimate; h, misfit and cone stay the cones'): ``conejax.Blend(alpha)``, the
      MAP blend for Gaussian noise; ``conejax.Keep(threshold)``, the observed pixels the fit
      explains (impulsive noise, with ``loss="l1"``); ``conejax.Fill(width, image_shape)``,
      observed pixels kept and the cone's fill corrected by its interpolated residual
      (missing pixels). See ``conejax.refine``; it equals ``conejax.refine(refine, V,
      reconstruct(...).u, A)``. Not with ``select="posterior"`` or ``weights``.

  Returns:
    ``Reconstruction`` (u, h, misfit, cone, converged); see its fields for shapes. A single sample
    (V of shape (k,)) and a single dictionary drop their axes.

  Raises:
    ValueError: on unknown loss or select, shape mismatch, non-finite data (NaN is allowed
      with ``missing="nan"``), weights not of V's shape or outside [0, 1] (under jit these
      make the result NaN), or mu_h < 0; under a beta-divergence, on negative V or A W,
      zeros of V (of non-zero weight) for beta <= 0, loss="l1", per-sample operators or
      NNLS options other than their defaults; for a refinement that does not apply (Keep
      and Fill need a mask or the identity), or one with ``select="posterior"`` or weights.

  Example:
    >>> import jax, jax.numpy as jnp, conejax
    >>> from conejax import operators
    >>> W = jnp.eye(4)[:, :2]
    >>> A = operators.mask(jnp.array([1.0, 0.0, 1.0, 1.0]))
    >>> conejax.reconstruct(W, jnp.array([2.0, 0.0, 0.0, 0.0]), A).u
    Array([2., 0., 0., 0.], dtype=float32)
  """
  if loss not in LOSSES:
    raise ValueError(f"loss must be one of {LOSSES}; got {loss!r}.")
  if select not in SELECTS:
    raise ValueError(f"select must be one of {SELECTS}; got {select!r}.")
  if variance not in VARIANCES:
    raise ValueError(f"variance must be one of {VARIANCES}; got {variance!r}.")
  if variance != "mixture" and select != "posterior":
    raise ValueError(f"variance={variance!r} describes the std of select='posterior'; got "
                     f"select={select!r}.")
  if variance == "total" and loss != "l2":
    raise ValueError("variance='total' needs loss='l2' (a least-squares fit has a code "
                     "covariance; the l1 fit has none): pass variance='mixture'.")
  if (select == "posterior") != (temperature is not None):
    raise ValueError("temperature goes with select='posterior' (and it needs one): pass "
                     "temperature=conejax.calibrate(cones, X_val, y_val) or 2 sigma^2 for noise "
                     f"sigma; got select={select!r}, temperature={temperature!r}.")
  if refine is not None and select == "posterior":
    raise ValueError("refine refines one estimate per cone or sample; select='posterior' "
                     "returns a mixture with its std. Refine with select='each' or 'best'.")
  if refine is not None and (weights is not None or missing is not None):
    raise ValueError("refine with weights: Keep and Fill know the observed pixels from A; pass "
                     "the missing entries as an operator, A = operators.mask(M), instead of "
                     "weights=M.")
  temperature = (check_temperature(temperature) if temperature is not None
                 else jnp.ones(()))
  W, mu_h, single_dictionary = _as_stack(dictionary, mu_h)
  V = _checks.as_float_array(V, "V")
  beta = _cone.beta_of(dictionary, beta_loss)
  if weights is not None or missing is not None:  # nmf's checks: V's missing entries at 0
    V, _, weights = _nmf_checks.check_loss(V, beta, weights, missing, name="V")
  _checks.check_finite(V, "V")
  m = W.shape[1]
  A = operators.identity(m) if A is None else A
  if not isinstance(A, operators.LinearOperator):
    raise ValueError(f"A must be a conejax.operators operator; got {type(A).__name__}. Wrap a "
                     "dense matrix with operators.matrix(M).")
  if A.in_size != m:
    raise ValueError(f"A maps signals of size {A.in_size}, but the cones' atoms have size {m}.")
  single_sample = V.ndim == 1
  V = V[None] if single_sample else V
  weights = weights[None] if single_sample and weights is not None else weights
  if V.ndim != 2 or V.shape[1] != A.out_size:
    raise ValueError(f"V must have shape (N, {A.out_size}) (A's output size), samples as rows; "
                     f"got {tuple(V.shape)}.")
  if per_sample_operator and not single_sample and operators.is_single(A, V.dtype):
    raise ValueError(f"per_sample_operator=True, but A is one operator (A.mv maps a signal "
                     f"({m},) to ({A.out_size},)); pass per_sample_operator=False to apply it "
                     "to every sample, or build one per sample, e.g. "
                     "jax.vmap(operators.mask)(M) with M of shape (N, m).")
  if per_sample_operator:
    sizes = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree.leaves(A)}
    if sizes != {V.shape[0]} and not single_sample:
      raise ValueError(f"per_sample_operator=True needs every array of A to have a leading "
                       f"axis of N = {V.shape[0]} samples; got leading sizes {sizes}.")
    if single_sample:
      A = jax.tree.map(lambda x: x[None], A)
  if refine is not None:
    _refine.check_refinement(refine, jax.tree.map(lambda x: x[0], A) if per_sample_operator
                             else A, m)
  dtype = jnp.result_type(W, V)
  mu = _checks.check_penalty(mu_h, "mu_h").astype(dtype)
  weights = None if weights is None else weights.astype(dtype)
  if beta != 2 and variance == "total":
    raise ValueError(f"variance='total' needs the Frobenius loss (a least-squares code "
                     f"covariance); beta_loss {beta:g} takes variance='mixture'.")
  if beta != 2:
    steps = _check_beta(beta, W, V, A, loss, per_sample_operator, dict(
        solver=solver, batch_size=batch_size, differentiation=differentiation,
        max_iter=max_iter, tol=tol), weights is not None)
    widths = jnp.asarray(dictionary.ranks if isinstance(dictionary, Cones)
                         else (W.shape[-1],) * W.shape[0], dtype)
    out = _reconstruct_beta(W.astype(dtype), V.astype(dtype), A, mu, temperature.astype(dtype),
                            widths, weights, select=select, beta=beta, max_iter=steps[0],
                            tol=steps[1])
    out = _refined(out, refine, V.astype(dtype), A, per_sample_operator)
    return _finish(out, single_dictionary, single_sample, select)
  solver, batch_size = _nnls.check_options(
      solver, max_iter=max_iter, tol=tol, batch_size=batch_size,
      differentiation=differentiation, loss=loss, matrix_free=per_sample_operator and loss == "l2",
      n_atoms=W.shape[-1] * (W.shape[0] if select == "union" else 1),
      n_features=W.shape[1] if A is None else A.out_size)
  if per_sample_operator and loss == "l2" and not solver.matrix_free_ok:
    raise ValueError(f"solver={type(solver).__name__} needs one operator shared by all "
                     "samples (a Gram matrix); per-sample operators are solved matrix-free "
                     "by 'apg' (the 'auto' choice).")
  options = dict(solver=solver, batch_size=batch_size)
  if loss == "l2":
    options.update(differentiation=differentiation, penalty="absolute")
  out = _reconstruct(W.astype(dtype), V.astype(dtype), A, mu, temperature.astype(dtype),
                     weights, loss=loss, select=select,
                     per_sample=bool(per_sample_operator),
                     options=tuple(sorted(options.items())),
                     chunk=_checks.check_positive_int(chunk_size, "chunk_size"),
                     variance=variance)
  out = _refined(out, refine, V.astype(dtype), A, per_sample_operator)
  return _finish(out, single_dictionary, single_sample, select)


def _refined(out, refinement, V, A, per_sample):
  """``out`` with its estimates u refined by their observations V (None: unchanged)."""
  if refinement is None:
    return out
  return out._replace(u=_refine.apply_refinement(refinement, V, out.u, A,
                                                 per_sample=bool(per_sample)))


def _finish(out, single_dictionary, single_sample, select):
  """``reconstruct``'s output with the axes of a single dictionary and sample dropped."""
  if single_dictionary and select == "each":
    out = Reconstruction(out.u[:, 0], out.h[:, 0], out.misfit[:, 0], out.cone,
                         out.converged[:, 0])
  elif single_dictionary and select == "posterior":
    out = out._replace(h=out.h[:, 0], misfit=out.misfit[:, 0])
  if single_sample:
    out = jax.tree.map(lambda x: x[0], out)
  solvers.warn_if_not_converged(out, "reconstruct", stacklevel=4)
  return out


@functools.partial(jax.jit, static_argnames=("wiener", "options"))
def _separate(W, V, mu, *, wiener, options):
  K, m, d = W.shape
  union = jnp.transpose(W, (1, 0, 2)).reshape(m, K * d)
  out = _solve_shared(union, V, mu, "l2", dict(options))
  h = out.h.reshape(-1, K, d)
  parts = jnp.einsum("nkd,kmd->nkm", h, W, precision=_HIGHEST)
  if wiener:
    total = jnp.sum(parts, axis=1, keepdims=True)
    share = jnp.where(total > 0, parts / jnp.where(total > 0, total, 1), 1.0 / K)
    parts = V[:, None] * share
  return parts, out


def separate(cones, V, *, mu_h=None, wiener: bool = True, solver="auto",
             max_iter: int | None = None, tol: float | None = None, batch_size: int = 2048,
             penalty: str = "absolute", beta_loss=None) -> jax.Array:
  """Splits mixtures v = u_1 + ... + u_K into one component per cone.

  Codes each mixture once on the concatenated dictionary [W_1, ..., W_K] (sparse NNLS),
  takes u_k = W_k h_k and, with ``wiener=True``, refines them by the Wiener-style mask
  u_k = v * W_k h_k / sum_j W_j h_j, so that the components add up to v (where every
  W_j h_j is zero the mixture is shared equally).

  With a beta-divergence (``beta_loss`` other than "frobenius") the codes minimise
  D_beta(v | [W_1, ..., W_K] h) + mu_h |h|_1 instead, by the multiplicative updates of
  ``conejax._nmf.nmf_codes`` (every atom fixed; KL for cones learnt under KL), and the
  same mask is applied.

  Args:
    cones: ``Cones`` or a (K, m, d) stack, one cone per source type.
    V: (m,) or (N, m) mixtures, samples as rows.
    mu_h: L1 weight of the codes >= 0; None takes the cones' own (0 for an array).
    wiener: apply the Wiener-style mask.
    solver, max_iter, tol, batch_size, penalty: as in ``conejax.nnls`` ("auto" is exact;
      ``penalty="relative"`` reads mu_h as a fraction of each mixture's largest useful
      penalty, for data of any scale).
    beta_loss: None (default: the cones' own loss, see ``conejax.codes``; Frobenius for an
      array), "frobenius" (the sparse NNLS above), "kullback-leibler", "itakura-saito" or a
      float beta, as in ``conejax.nmf``. Other than "frobenius", V must
      be non-negative, ``max_iter`` (default 200) and ``tol`` (default 1e-5) are those of
      the multiplicative updates, and ``solver``, ``batch_size`` and ``penalty`` must keep
      their defaults.

  Returns:
    (N, K, m) components ((K, m) for a single mixture), in the order of the cones.

  Raises:
    ValueError: on fewer than two cones, shape mismatch, non-finite data or mu_h < 0.

  Example:
    >>> import jax.numpy as jnp, conejax
    >>> W = jnp.stack([jnp.eye(3)[:, :1], jnp.eye(3)[:, 1:2]])   # two cones, one atom each
    >>> conejax.separate(W, jnp.array([2.0, 3.0, 0.0]))
    Array([[2., 0., 0.],
           [0., 3., 0.]], dtype=float32)
  """
  W, mu_h, _ = _as_stack(cones, mu_h)
  if W.shape[0] < 2:
    raise ValueError(f"separate needs at least two cones, one per source; got {W.shape[0]}.")
  V = _checks.as_float_array(V, "V")
  _checks.check_finite(V, "V")
  single = V.ndim == 1
  V = V[None] if single else V
  if V.ndim != 2 or V.shape[1] != W.shape[1]:
    raise ValueError(f"V must have shape (N, {W.shape[1]}), mixtures as rows; got "
                     f"{tuple(V.shape)}.")
  dtype = jnp.result_type(W, V)
  mu = _checks.check_penalty(mu_h, "mu_h").astype(dtype)
  beta = _cone.beta_of(cones, beta_loss)
  if beta != 2:  # a beta-divergence: the codes of NMF's multiplicative updates
    if (solver, batch_size, penalty) != ("auto", 2048, "absolute"):
      raise ValueError(f"beta_loss={beta_loss!r} codes by multiplicative updates: solver, "
                       "batch_size and penalty apply to beta_loss='frobenius' only; leave "
                       "them at their defaults.")
    union = jnp.transpose(W, (1, 0, 2)).reshape(W.shape[1], -1).astype(dtype)
    H = _nmf.nmf_codes(union, V.astype(dtype), mu_h=mu, beta_loss=beta, method="mu",
                       max_iter=200 if max_iter is None else max_iter,
                       tol=1e-5 if tol is None else tol).H
    parts = jnp.einsum("nkd,kmd->nkm", H.reshape(-1, *W.shape[::2]), W.astype(dtype),
                       precision=_HIGHEST)
    if wiener:
      total = jnp.sum(parts, axis=1, keepdims=True)
      parts = V[:, None] * jnp.where(total > 0, parts / jnp.where(total > 0, total, 1),
                                     1.0 / W.shape[0])
    return parts[0] if single else parts
  solver, batch_size = _nnls.check_options(solver, max_iter=max_iter, tol=tol,
                                           batch_size=batch_size, differentiation="implicit",
                                           penalty=penalty, n_atoms=W.shape[0] * W.shape[2],
                                           n_features=W.shape[1])
  options = tuple(sorted(dict(solver=solver, batch_size=batch_size, penalty=penalty,
                               differentiation="implicit").items()))
  parts, out = _separate(W.astype(dtype), V.astype(dtype), mu, wiener=bool(wiener),
                         options=options)
  union = jnp.transpose(W, (1, 0, 2)).reshape(W.shape[1], -1)
  _nnls.report(out, "separate", mu if penalty == "absolute" else None,
               lambda: jnp.dot(V, union.astype(V.dtype)))
  return parts[0] if single else parts
