"""reconstruct and separate: against scipy on the materialised problem, loops, and each other."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linprog, minimize, nnls

import conejax
from conejax import operators

IMAGE = (6, 4)
M = IMAGE[0] * IMAGE[1]


def _problem(seed, dtype, K=3, d=4, n=6):
  rng = np.random.default_rng(seed)
  W = rng.random((K, M, d)).astype(dtype)
  U = np.einsum("nd,kmd->nkm", rng.random((n, d)), W)[:, 0]
  return jnp.asarray(W), jnp.asarray(U.astype(dtype)), rng


def _operators(rng):
  return {
      "identity": operators.identity(M),
      "mask": operators.mask(jnp.asarray(rng.random(M) > 0.4, jnp.float64)),
      "blur": operators.blur(jnp.ones((3, 3)) / 9, IMAGE, boundary="reflect"),
      "downsample": operators.downsample(2, IMAGE),
      "sensing": operators.gaussian_sensing(jax.random.key(0), 12, M),
  }


def _l2_reference(B, v, mu):
  """argmin_{h >= 0} 0.5 ||B h - v||^2 + mu sum(h): scipy nnls (mu = 0) or L-BFGS-B."""
  if mu == 0:
    return nnls(B, v, maxiter=1000)[0]
  f = lambda h: (0.5 * np.sum((B @ h - v) ** 2) + mu * h.sum(), B.T @ (B @ h - v) + mu)
  return minimize(f, np.zeros(B.shape[1]), jac=True, method="L-BFGS-B",
                  bounds=[(0, None)] * B.shape[1], options=dict(ftol=1e-15, gtol=1e-12)).x


@pytest.mark.parametrize("name", ["identity", "mask", "blur", "downsample", "sensing"])
@pytest.mark.parametrize("mu", [0.0, 0.05])
def test_l2_matches_scipy_on_the_materialised_problem(name, mu):
  W, U, rng = _problem(0, np.float64)
  A = _operators(rng)[name]
  V = operators.apply(A, U) + 0.05 * rng.standard_normal((len(U), A.out_size))
  out = conejax.reconstruct(W[0], V, A, mu_h=mu)
  assert out.converged.shape == (len(V),) and np.all(out.converged)
  B = np.asarray(operators.materialise(A, dtype=jnp.float64)) @ np.asarray(W[0])
  objective = lambda h, v: 0.5 * np.sum((B @ h - v) ** 2) + mu * np.sum(h)
  for v, h, u in zip(np.asarray(V), np.asarray(out.h), np.asarray(out.u)):
    ref = _l2_reference(B, v, mu)
    assert objective(h, v) <= objective(ref, v) * (1 + 1e-8) + 1e-12
    np.testing.assert_allclose(u, np.asarray(W[0]) @ h, rtol=1e-12)
  np.testing.assert_allclose(out.misfit, 0.5 * np.sum((np.asarray(out.h) @ B.T - V) ** 2, -1),
                             rtol=1e-10)


@pytest.mark.parametrize("mu", [0.0, 0.2])
def test_l1_matches_linear_programming(mu):
  W, U, rng = _problem(1, np.float64)
  A = _operators(rng)["blur"]
  V = np.array(operators.apply(A, U))
  V[:, ::5] = 1.0  # impulsive noise
  out = conejax.reconstruct(W[0], V, A, mu_h=mu, loss="l1", tol=1e-9, max_iter=50000)
  assert np.all(out.converged)
  B = np.asarray(operators.materialise(A, dtype=jnp.float64)) @ np.asarray(W[0])
  k, d = B.shape
  for v, h, misfit in zip(V, np.asarray(out.h), np.asarray(out.misfit)):
    # variables (h, t): min mu 1^T h + 1^T t  s.t.  B h - t <= v,  -B h - t <= -v
    lp = linprog(np.r_[np.full(d, mu), np.ones(k)],
                 A_ub=np.block([[B, -np.eye(k)], [-B, -np.eye(k)]]), b_ub=np.r_[v, -v],
                 bounds=[(0, None)] * (d + k), method="highs")
    assert misfit + mu * h.sum() == pytest.approx(lp.fun, rel=1e-5)
    assert misfit == pytest.approx(np.abs(B @ h - v).sum(), rel=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", ["l2", "l1"])
def test_select_best_and_union_agree_with_each(dtype, loss):
  W, U, rng = _problem(2, dtype)
  V = U + dtype(0.1) * rng.random(U.shape).astype(dtype)
  each = conejax.reconstruct(W, V, loss=loss, select="each")
  best = conejax.reconstruct(W, V, loss=loss, select="best")
  union = conejax.reconstruct(W, V, loss=loss, select="union")
  assert each.u.shape == (len(V), 3, M) and each.u.dtype == dtype
  chosen = np.argmin(np.asarray(each.misfit), axis=1)
  np.testing.assert_array_equal(best.cone, chosen)
  np.testing.assert_allclose(best.u, np.asarray(each.u)[np.arange(len(V)), chosen], rtol=1e-6,
                             atol=1e-6)
  # The union contains every cone, so it fits at least as well as the best one.
  slack = 1e-3 if dtype == np.float32 else 1e-6
  assert np.all(np.asarray(union.misfit) <= np.asarray(best.misfit) * (1 + slack) + slack)
  single = conejax.reconstruct(jnp.transpose(W, (1, 0, 2)).reshape(M, -1), V, loss=loss)
  np.testing.assert_allclose(union.u, single.u, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", ["l2", "l1"])
def test_per_sample_masks_equal_a_loop(dtype, loss):
  W, U, rng = _problem(3, dtype)
  masks = (rng.random(U.shape) > 0.5).astype(dtype)
  batched = jax.vmap(operators.mask)(jnp.asarray(masks))
  out = conejax.reconstruct(W, U * masks, batched, per_sample_operator=True, select="best",
                            loss=loss, chunk_size=4)
  for i in range(len(U)):
    one = conejax.reconstruct(W, U[i] * masks[i], operators.mask(masks[i]), select="best",
                              loss=loss)
    assert int(one.cone) == int(out.cone[i])
    np.testing.assert_allclose(out.u[i], one.u, rtol=1e-4, atol=1e-5)


def test_cones_clean_signals_are_recovered_and_jit_matches_eager():
  W, U, rng = _problem(4, np.float64)
  cones = conejax.make_cones(W)
  A = _operators(rng)["mask"]
  V = operators.apply(A, U)
  eager = conejax.reconstruct(cones, V, A, select="best")
  jitted = jax.jit(lambda v: conejax.reconstruct(cones, v, A, select="best"))(V)
  np.testing.assert_allclose(jitted.u, eager.u, rtol=1e-12)
  # U was generated from cone 0 and the mask keeps most pixels: exact recovery.
  np.testing.assert_allclose(eager.u, U, rtol=1e-6, atol=1e-8)


def test_reconstruct_is_differentiable_in_the_observation():
  W, U, rng = _problem(5, np.float64)
  A = _operators(rng)["blur"]
  v = operators.apply(A, U[0]) + 0.3
  f = lambda v: jnp.sum(conejax.reconstruct(W[0], v, A, mu_h=0.01).u ** 2)
  direction = jnp.asarray(rng.standard_normal(v.shape))
  eps = 1e-6
  numeric = (f(v + eps * direction) - f(v - eps * direction)) / (2 * eps)
  assert jnp.vdot(jax.grad(f)(v), direction) == pytest.approx(float(numeric), rel=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_separate_recovers_sources_and_wiener_parts_add_up(dtype):
  W, _, rng = _problem(6, dtype, K=2)
  W = np.array(W)
  W[0, M // 2:], W[1, : M // 2] = 0, 0  # sources on disjoint pixels: separable exactly
  sources = np.einsum("nkd,kmd->nkm", rng.random((5, 2, 4)), W).astype(dtype)
  mixtures = sources.sum(1)
  plain = conejax.separate(W, mixtures, wiener=False)
  wiener = conejax.separate(W, mixtures)
  tol = 1e-4 if dtype == np.float32 else 1e-8
  np.testing.assert_allclose(plain, sources, rtol=tol, atol=tol)
  np.testing.assert_allclose(np.asarray(wiener).sum(1), mixtures, rtol=1e-6)
  assert conejax.separate(W, mixtures[0]).shape == (2, M)


def test_separate_equals_nnls_on_the_concatenated_dictionary():
  W, _, rng = _problem(7, np.float64, K=2)
  mixtures = rng.random((4, M))
  parts = conejax.separate(W, mixtures, wiener=False)
  union = np.concatenate([W[0], W[1]], axis=1)
  for v, p in zip(mixtures, np.asarray(parts)):
    h = nnls(union, v, maxiter=1000)[0]
    np.testing.assert_allclose(p, [W[0] @ h[:4], W[1] @ h[4:]], atol=1e-7)


def _posterior_reference(W, V, A, T, loss="l2"):
  """Mean and std of the mixture of the per-cone estimates under softmax(-D^2 / T), numpy."""
  each = conejax.reconstruct(W, V, A, loss=loss, select="each")
  U = np.asarray(each.u, np.float64)
  dense = np.asarray(operators.materialise(A, dtype=np.asarray(V).dtype), np.float64)
  R = np.einsum("cm,nkm->nkc", dense, U) - np.asarray(V, np.float64)[:, None]
  energy = np.sum(R**2, -1) if loss == "l2" else np.sum(np.abs(R), -1)
  logits = -energy / T
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  mean = np.einsum("nk,nkm->nm", p, U)
  std = np.sqrt(np.einsum("nk,nkm->nm", p, (U - mean[:, None]) ** 2))
  return p, mean, std, each


def _noisy_downsampled(seed, dtype):
  """Cones (mu_h 0.02), the 2x downsampling A, noisy observations V and a temperature."""
  W, U, rng = _problem(seed, dtype)
  A = _operators(rng)["downsample"]
  V = (operators.apply(A, U) + 0.05 * rng.standard_normal((len(U), A.out_size))).astype(dtype)
  return W, conejax.make_cones(W, 0.02), A, V, dtype(0.05)


POSTERIOR_MODES = pytest.mark.parametrize(
    "dtype, transform", [(np.float32, lambda f: f), (np.float64, jax.jit)],
    ids=["float32-eager", "float64-jit"])


@POSTERIOR_MODES
def test_posterior_is_the_mixture_of_the_cones_estimates(dtype, transform):
  with jax.enable_x64(dtype == np.float64):
    W, cones, A, V, T = _noisy_downsampled(9, dtype)
    out = transform(lambda V: conejax.reconstruct(cones, V, A, select="posterior",
                                                  temperature=T))(V)
    p, mean, std, each = _posterior_reference(cones, V, A, T)
    tol = 1e-4 if dtype == np.float32 else 1e-9
    assert out.u.dtype == dtype and out.std.shape == (len(V), M) and out.h.shape == (6, 3, 4)
    assert 0.05 < np.mean(p.max(1)) < 0.999                # a real mixture, not one-hot
    np.testing.assert_allclose(out.u, mean, rtol=tol, atol=tol)
    np.testing.assert_allclose(out.std, std, rtol=tol, atol=tol)
    np.testing.assert_array_equal(out.cone, np.argmax(p, 1))
    np.testing.assert_allclose(out.misfit, each.misfit, rtol=tol)
    # the weights are predict_proba's through the same operator and temperature
    np.testing.assert_allclose(conejax.predict_proba(cones, V, A=A, temperature=T), p,
                               rtol=10 * tol, atol=tol)
    assert conejax.reconstruct(cones, V, A, select="each").std is None


def test_posterior_with_the_l1_loss_and_per_sample_masks():
  W, U, rng = _problem(10, np.float64)
  A = _operators(rng)["mask"]
  V = operators.apply(A, U) + 0.05 * rng.random(U.shape)
  out = conejax.reconstruct(W, V, A, loss="l1", select="posterior", temperature=0.2)
  p, mean, std, _ = _posterior_reference(W, V, A, 0.2, loss="l1")
  np.testing.assert_allclose(out.u, mean, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(out.std, std, rtol=1e-6, atol=1e-8)
  masks = jax.vmap(operators.mask)(jnp.broadcast_to(A.weights, U.shape))
  batched = conejax.reconstruct(W, V, masks, per_sample_operator=True, select="posterior",
                                temperature=0.2, tol=1e-12, max_iter=50000)
  shared = conejax.reconstruct(W, V, A, select="posterior", temperature=0.2)
  np.testing.assert_allclose(batched.u, shared.u, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(batched.std, shared.std, rtol=1e-4, atol=1e-6)


def _within_reference(W, V, A, out, weights=None):
  """(n, k, sigma_k^2 diag(W_S (B_S^T M B_S + eps I)^{-1} W_S^T)) per sample and cone, numpy."""
  dense = np.asarray(operators.materialise(A, dtype=np.asarray(V).dtype), np.float64)
  W, h = np.asarray(W, np.float64), np.asarray(out.h, np.float64)
  M = np.ones(np.shape(V)) if weights is None else np.asarray(weights, np.float64)
  R = np.einsum("cm,nkm->nkc", dense, np.einsum("nkd,kmd->nkm", h, W)) - np.asarray(V)[:, None]
  eps = np.sqrt(np.finfo(np.asarray(V).dtype).eps)
  for n in range(len(h)):
    for k in range(len(W)):
      B, S = dense @ W[k], h[n, k] > 0
      G = B.T @ (M[n][:, None] * B)
      inverse = np.linalg.inv(G[np.ix_(S, S)] + eps * G.diagonal().max() * np.eye(S.sum()))
      reached = M[n][np.any(B != 0, axis=1)].sum()
      noise = np.sum(M[n] * R[n, k] ** 2) / max(reached - S.sum(), 1)
      yield n, k, noise * np.einsum("md,de,me->m", W[k][:, S], inverse, W[k][:, S])


@POSTERIOR_MODES
def test_total_variance_adds_each_cones_least_squares_variance(dtype, transform):
  with jax.enable_x64(dtype == np.float64):
    W, cones, A, V, T = _noisy_downsampled(11, dtype)
    run = lambda variance: transform(lambda V: conejax.reconstruct(
        cones, V, A, select="posterior", temperature=T, variance=variance))(V)
    mixture, total = run("mixture"), run("total")
    p = np.asarray(conejax.predict_proba(cones, V, A=A, temperature=T), np.float64)
    within = np.zeros((len(V), M))
    for n, k, var in _within_reference(W, V, A, total):
      within[n] += p[n, k] * var
    tol = 1e-4 if dtype == np.float32 else 1e-9
    assert total.std.dtype == dtype and 0.05 < np.mean(p.max(1)) < 0.999
    assert np.all(within > 0)
    np.testing.assert_allclose(total.u, mixture.u)
    np.testing.assert_allclose(total.std**2, np.asarray(mixture.std, np.float64)**2 + within,
                               rtol=10 * tol, atol=tol**2)


def test_total_variance_matches_the_spread_of_least_squares_estimates_under_noise():
  """One cone, all atoms active: std^2 is sigma^2 diag(W (B^T B)^{-1} W^T) with sigma^2
  estimated unbiasedly, so its mean over noise draws is the estimates' empirical variance."""
  rng = np.random.default_rng(12)
  W = jnp.asarray(rng.random((M, 3)))
  A = operators.gaussian_sensing(jax.random.key(1), 12, M)
  u = W @ jnp.asarray([3.0, 2.0, 4.0])            # far inside the cone: every code stays > 0
  sigma, draws = 0.05, 4000
  V = operators.apply(A, u)[None] + sigma * jnp.asarray(rng.standard_normal((draws, 12)))
  out = conejax.reconstruct(W, V, A, select="posterior", temperature=1.0, variance="total")
  assert bool(jnp.all(out.h > 0))
  empirical = np.var(np.asarray(out.u), axis=0)
  B = np.asarray(operators.materialise(A)) @ np.asarray(W)
  exact = sigma**2 * np.einsum("md,de,me->m", W, np.linalg.inv(B.T @ B), W)
  np.testing.assert_allclose(np.mean(np.asarray(out.std) ** 2, 0), exact, rtol=1e-5 + 0.05)
  np.testing.assert_allclose(empirical, exact, rtol=0.1)


def test_total_variance_under_grad_and_vmap():
  """d sum(std^2) / dV equals central differences (float64, supports fixed by the small
  step), and vmap over samples equals the batched call."""
  W, cones, A, V, T = _noisy_downsampled(14, np.float64)
  total = lambda V: conejax.reconstruct(cones, V, A, select="posterior", temperature=T,
                                        variance="total")
  f = lambda V: jnp.sum(total(V).std ** 2)
  g = np.asarray(jax.grad(f)(V))
  direction = np.random.default_rng(0).standard_normal(V.shape)
  eps = 1e-6
  numeric = (f(V + eps * direction) - f(V - eps * direction)) / (2 * eps)
  np.testing.assert_allclose(np.sum(g * direction), numeric, rtol=1e-5)
  assert np.abs(g).max() > 0
  mapped = jax.vmap(lambda v: total(v).std)(V)
  np.testing.assert_allclose(mapped, total(V).std, rtol=1e-10, atol=1e-14)


def test_total_variance_with_weights_equals_per_sample_masks():
  W, U, rng = _problem(13, np.float64)
  keep = (rng.random(U.shape) > 0.3).astype(np.float64)
  V = (U + 0.02 * rng.random(U.shape)) * keep     # 0 where missing, as a mask observes
  run = lambda **kw: conejax.reconstruct(W, V, select="posterior", temperature=0.2,
                                         variance="total", **kw)
  weighted = run(weights=keep)
  masked = run(A=jax.vmap(operators.mask)(jnp.asarray(keep)), per_sample_operator=True,
               tol=1e-12, max_iter=50000)
  within = np.zeros(U.shape)
  p = np.asarray(conejax.predict_proba(conejax.make_cones(W, 0.0), V, temperature=0.2,
                                       weights=keep))
  for n, k, var in _within_reference(W, V, operators.identity(M), weighted, keep):
    within[n] += p[n, k] * var
  chunked = run(weights=keep, chunk_size=4)                 # 6 samples: a padded last chunk
  spread = np.asarray(conejax.reconstruct(W, V, select="posterior", temperature=0.2,
                                          weights=keep).std) ** 2
  np.testing.assert_allclose(weighted.std**2, spread + within, rtol=1e-8, atol=1e-14)
  np.testing.assert_allclose(masked.std, weighted.std, rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(chunked.std, weighted.std, rtol=1e-12)


def test_bad_input():
  W, U, rng = _problem(8, np.float32)
  A = operators.downsample(2, IMAGE)
  with pytest.raises(ValueError, match="loss must be one of"):
    conejax.reconstruct(W, U, loss="huber")
  with pytest.raises(ValueError, match="select must be one of"):
    conejax.reconstruct(W, U, select="all")
  with pytest.raises(ValueError, match="temperature goes with select='posterior'"):
    conejax.reconstruct(W, U, select="posterior")
  with pytest.raises(ValueError, match="temperature goes with select='posterior'"):
    conejax.reconstruct(W, U, temperature=1.0)
  with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
    conejax.reconstruct(W, U, select="posterior", temperature=0.0)
  with pytest.raises(ValueError, match="variance must be one of"):
    conejax.reconstruct(W, U, select="posterior", temperature=1.0, variance="epistemic")
  with pytest.raises(ValueError, match="describes the std of select='posterior'"):
    conejax.reconstruct(W, U, variance="total")
  with pytest.raises(ValueError, match="variance='total' needs loss='l2'"):
    conejax.reconstruct(W, U, loss="l1", select="posterior", temperature=1.0, variance="total")
  with pytest.raises(ValueError, match="variance='total' needs the Frobenius loss"):
    conejax.reconstruct(W, U, select="posterior", temperature=1.0, variance="total",
                        beta_loss="kullback-leibler")
  with pytest.raises(ValueError, match="atoms have size"):
    conejax.reconstruct(W, U, operators.identity(M + 1))
  with pytest.raises(ValueError, match=r"V must have shape \(N, 6\)"):
    conejax.reconstruct(W, U, A)
  with pytest.raises(ValueError, match="operators.matrix"):
    conejax.reconstruct(W, U, np.eye(M))
  with pytest.raises(ValueError, match="leading axis of N"):
    conejax.reconstruct(W, U, jax.vmap(operators.mask)(jnp.ones((2, M))),
                        per_sample_operator=True)
  with pytest.raises(ValueError, match="one operator shared by all samples"):
    conejax.reconstruct(W, U, jax.vmap(operators.mask)(jnp.ones((len(U), M))),
                        per_sample_operator=True, solver="active_set")
  with pytest.raises(ValueError, match="solver must be one of"):
    conejax.reconstruct(W, U, solver="pdhg")
  with pytest.raises(ValueError, match="mu_h must be a finite number >= 0"):
    conejax.reconstruct(W, U, mu_h=-1.0)
  with pytest.raises(ValueError, match="NaN or Inf"):
    conejax.reconstruct(W, U.at[0, 0].set(jnp.nan))
  with pytest.raises(ValueError, match="at least two cones"):
    conejax.separate(W[:1], U)
  with pytest.raises(ValueError, match="mixtures as rows"):
    conejax.separate(W, U.T)
