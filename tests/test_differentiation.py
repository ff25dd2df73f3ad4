"""Gradients through the projection, both routes, against central finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conejax
from conejax import operators

IMAGE = (4, 3)
M = IMAGE[0] * IMAGE[1]
# Converged solutions for the implicit route; a fixed number of steps for the unrolled one
# (its gradient is that of the truncated iteration, so it matches its own finite
# differences at any step count, and the implicit gradient once the iteration has converged).
ROUTES = {"implicit": dict(max_iter=20000, tol=1e-14), "unroll": dict(max_iter=3000)}


def _problem(seed=0, K=2, d=4, n=3, dtype=np.float64):
  rng = np.random.default_rng(seed)
  W = jnp.asarray(rng.random((K, M, d)).astype(dtype))
  X = jnp.asarray(rng.random((n, M)).astype(dtype))
  return W, X, rng


def _check_directional(f, x, rng, rtol=1e-5, eps=1e-6):
  """<grad f(x), e> against (f(x + eps e) - f(x - eps e)) / 2 eps for a random direction e."""
  direction = jnp.asarray(rng.standard_normal(x.shape))
  analytic = float(jnp.vdot(jax.grad(f)(x), direction))
  numeric = float((f(x + eps * direction) - f(x - eps * direction)) / (2 * eps))
  np.testing.assert_allclose(analytic, numeric, rtol=rtol)
  assert abs(numeric) > 1e-3  # a direction the function actually depends on


def _cones(W, mu_h=0.05):
  return conejax.Cones(W, jnp.asarray(mu_h, W.dtype))


# Scalar functions of (W, X): each touches a different public entry point.
FUNCTIONS = {
    "codes": lambda W, X, **o: jnp.sum(jnp.sin(conejax.codes(_cones(W), X, **o))),
    "project": lambda W, X, **o: jnp.sum(conejax.project(_cones(W), X, **o) ** 2),
    "distance": lambda W, X, **o: jnp.sum(conejax.distance(_cones(W), X, **o) ** 1.5),
    "reconstruct_blur": lambda W, X, **o: jnp.sum(conejax.reconstruct(
        W[0], X, operators.blur(jnp.arange(1.0, 7.0).reshape(2, 3) / 21, IMAGE), mu_h=0.05,
        **o).u ** 2),
    "reconstruct_best": lambda W, X, **o: jnp.sum(conejax.reconstruct(
        W, X, mu_h=0.05, select="best", **o).u ** 2),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("wrt", ["W", "X"])
def test_gradient_matches_central_differences(route, name, wrt):
  W, X, rng = _problem()
  f = FUNCTIONS[name]
  options = dict(ROUTES[route], differentiation=route)
  if wrt == "W":
    _check_directional(lambda W_: f(W_, X, **options), W, rng)
  else:
    _check_directional(lambda X_: f(W, X_, **options), X, rng)


@pytest.mark.parametrize("route", ROUTES)
def test_gradient_with_respect_to_operator_arrays(route):
  W, X, rng = _problem(1)
  options = dict(ROUTES[route], differentiation=route)

  def f(kernel):
    A = operators.blur(kernel, IMAGE, boundary="reflect")
    return jnp.sum(conejax.reconstruct(W[0], A.mv(X[0])[None] + 0.1, A, mu_h=0.02,
                                       **options).u ** 2)

  _check_directional(f, jnp.asarray(rng.random((3, 3))), rng)


@pytest.mark.parametrize("route", ROUTES)
def test_gradient_with_per_sample_masks_unrolled(route):
  W, X, rng = _problem(2)
  masks = jnp.asarray(rng.random((3, M)) > 0.3, jnp.float64)
  A = jax.vmap(operators.mask)(masks)
  f = lambda X_: jnp.sum(conejax.reconstruct(W[0], X_ * masks, A, mu_h=0.05,
                                             per_sample_operator=True, differentiation="unroll",
                                             max_iter=3000).u ** 2)
  if route == "unroll":
    _check_directional(f, X, rng)
  else:  # the per-sample matrix-free solver has no implicit route: reverse mode refuses it
    with pytest.raises(ValueError, match="differentiation='unroll'"):
      jax.grad(lambda X_: jnp.sum(conejax.reconstruct(
          W[0], X_ * masks, A, mu_h=0.05, per_sample_operator=True).u))(X)


@pytest.mark.parametrize("wrt", [0, 1])
def test_routes_agree_once_converged(wrt):
  W, X, _ = _problem(3)
  grads = {route: jax.grad(lambda W_, X_: FUNCTIONS["distance"](W_, X_, differentiation=route,
                                                                **ROUTES[route]),
                           argnums=wrt)(W, X) for route in ROUTES}
  np.testing.assert_allclose(grads["unroll"], grads["implicit"], rtol=1e-7, atol=1e-10)


def test_gradient_wrt_mu_h_matches_central_differences():
  W, X, rng = _problem(4)
  for route, options in ROUTES.items():
    f = lambda mu: jnp.sum(conejax.project(_cones(W, mu), X, differentiation=route,
                                           **options) ** 2)
    _check_directional(f, jnp.asarray(0.05), rng)


@pytest.mark.parametrize("route", ROUTES)
def test_distance_gradient_is_finite_at_zero_residual(route):
  W, _, rng = _problem(5)
  X = jnp.einsum("nd,md->nm", jnp.asarray(rng.random((3, 4))), W[0])  # inside cone 0
  cones = _cones(W, 0.0)
  for argnum in (0, 1):
    grad = jax.grad(lambda W_, X_: jnp.sum(conejax.distance(
        conejax.Cones(W_, cones.mu_h), X_, differentiation=route, **ROUTES[route])),
                    argnums=argnum)(W, X)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("route", ROUTES)
def test_jit_vmap_and_loop_gradients_agree(route):
  W, X, _ = _problem(6)
  g = lambda x: jax.grad(lambda W_: FUNCTIONS["distance"](W_, x[None], differentiation=route,
                                                          **ROUTES[route]))(W)
  looped = jnp.stack([g(x) for x in X])
  np.testing.assert_allclose(jax.jit(jax.vmap(g))(X), looped, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(jax.jit(g)(X[0]), looped[0], rtol=1e-9, atol=1e-12)


def test_float32_gradients_of_both_routes_agree():
  W, X, _ = _problem(7, dtype=np.float32)
  grads = [jax.grad(lambda W_: FUNCTIONS["distance"](W_, X, differentiation=route,
                                                     max_iter=2000, tol=1e-6))(W)
           for route in ROUTES]
  assert grads[0].dtype == jnp.float32
  np.testing.assert_allclose(grads[1], grads[0], rtol=2e-3, atol=2e-4)


def test_unknown_route_is_refused():
  W, X, _ = _problem()
  with pytest.raises(ValueError, match="differentiation"):
    conejax.codes(_cones(W), X, differentiation="autodiff")
  with pytest.raises(ValueError, match="differentiation"):
    conejax.reconstruct(W[0], X, differentiation="autodiff")
