"""finetune through an operator A: the distances of distance(A=), gradients with respect to
the signal-space atoms, and the errors that name the argument.

One problem throughout (two classes of 4 x 4 signals, 60 samples, random starting cones of
two atoms), so that the tests share their compiled programs.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import conejax
from conejax import _finetune, operators, solvers
from helpers import two_classes

# The solver finetune builds from solver="auto", tol=1e-12, max_iter=5000 (exact codes).
EXACT = solvers.resolve("auto", max_iter=5000, tol=1e-12)
OPTIONS = tuple(sorted(dict(solver=EXACT, differentiation="implicit").items()))
POOL = operators.downsample(2, (4, 4))   # 16 pixels -> 4 observations


def _problem(seed=0, dtype=np.float64):
  cones, X, y, _ = two_classes(seed=seed, m=16)
  return conejax.make_cones(cones.W.astype(dtype)), X.astype(dtype), y


def _invertible(m=16, seed=1):
  """A well-conditioned dense (m, m) matrix with negative entries."""
  rng = np.random.default_rng(seed)
  return np.eye(m) + 0.3 * rng.standard_normal((m, m)) / np.sqrt(m)


def _loss_and_grad(cones, V, y, A=None):
  """finetune's cross entropy (T = 1) on the whole batch and its gradient in W."""
  meta = None if A is None else (cones.classes, cones.settings)
  return _finetune._loss_and_grad(cones.W, jnp.asarray(V), jnp.asarray(y, jnp.int32), cones.mu_h,
                                  jnp.ones((), cones.W.dtype), A, objective="cross_entropy",
                                  options=OPTIONS, meta=meta)


def _full_batch_step(cones, V, y, A, learning_rate):
  """One SGD step of finetune on all of (V, y), the stepped cones returned."""
  counter = itertools.count()  # a score that always improves: the last cones are returned
  return conejax.finetune(cones, V, y, optax.sgd(learning_rate), steps=1,
                          key=jax.random.key(0), batch_size=len(y), validation=(V, y),
                          eval_every=1, score=lambda c: next(counter), tol=1e-12,
                          max_iter=5000, A=A, progress=False)


def test_with_the_identity_operator_finetune_is_plain_finetune():
  cones, X, y = _problem()
  run = lambda **kw: conejax.finetune(cones, X, y, optax.adam(0.05), steps=6,
                                      key=jax.random.key(3), batch_size=16, validation=0.25,
                                      eval_every=3, progress=False, **kw)
  plain, through = run(), run(A=operators.identity(16))
  np.testing.assert_allclose(through.cones.W, plain.cones.W, rtol=1e-9, atol=1e-12)
  assert through.best_step == plain.best_step
  for a, b in zip(through.history, plain.history):
    np.testing.assert_allclose(a, b, rtol=1e-9)


def test_squared_distances_through_A_are_those_of_distance():
  cones, X, _ = _problem()
  V = operators.apply(POOL, jnp.asarray(X))
  np.testing.assert_allclose(
      _finetune.squared_distances(cones.W, V, cones.mu_h, solver=EXACT, A=POOL),
      conejax.distance(cones, V, A=POOL) ** 2, rtol=1e-9)


def test_the_gradient_through_an_invertible_A_is_the_dense_reference_gradient():
  cones, X, y = _problem()
  M = _invertible()
  V = X @ M.T   # observations v = M u
  MW = jnp.einsum("ij,kjd->kid", M, cones.W)   # plain distances on cones of atoms M W
  loss, grad = _loss_and_grad(cones, V, y, operators.matrix(M))
  dense_loss, dense_grad = _loss_and_grad(conejax.Cones(MW, cones.mu_h), V, y)
  np.testing.assert_allclose(loss, dense_loss, rtol=1e-10)
  np.testing.assert_allclose(grad, jnp.einsum("ij,kid->kjd", M, dense_grad),   # M^T dL/dB
                             rtol=1e-7, atol=1e-10)
  # finetune's step is the projected step along it
  out = _full_batch_step(cones, V, y, operators.matrix(M), 0.05)
  expected = _finetune.project_dictionaries(cones.W - 0.05 * grad)
  np.testing.assert_allclose(out.cones.W, expected, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(out.history.train_loss[1], dense_loss, rtol=1e-9)


def test_the_gradient_through_pooling_matches_central_differences():
  cones, X, y = _problem()
  V = operators.apply(POOL, jnp.asarray(X))
  loss = lambda W: _loss_and_grad(conejax.Cones(W, cones.mu_h, cones.classes), V, y, POOL)[0]
  direction = jax.random.normal(jax.random.key(0), cones.W.shape, cones.W.dtype)
  eps = 1e-6
  numeric = (loss(cones.W + eps * direction) - loss(cones.W - eps * direction)) / (2 * eps)
  grad = _loss_and_grad(cones, V, y, POOL)[1]
  np.testing.assert_allclose(jnp.vdot(grad, direction), numeric, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fine_tuning_through_pooling_raises_the_accuracy_of_poor_cones(dtype):
  start, X, y = _problem(dtype=dtype)
  V = np.asarray(operators.apply(POOL, jnp.asarray(X)))
  before = conejax.score(start, V, y, A=POOL)
  out = conejax.finetune(start, V, y, optax.adam(0.05), steps=20, key=jax.random.key(1),
                         batch_size=len(y), validation=(V, y), eval_every=10,
                         temperature=0.05, A=POOL, progress=False)
  after = conejax.score(out.cones, V, y, A=POOL)
  assert before <= 0.5 and after >= 0.95, (before, after)
  assert out.history.val_score[0] == before
  assert out.cones.W.shape == start.W.shape and out.cones.W.dtype == dtype
  assert jnp.all(out.cones.W >= 0)
  np.testing.assert_allclose(jnp.linalg.norm(out.cones.W, axis=1), 1, rtol=1e-5)


def test_a_second_run_on_the_same_shapes_reuses_the_compiled_gradient():
  def run(seed):
    cones, X, y = _problem(seed)
    return _full_batch_step(cones, np.asarray(operators.apply(POOL, jnp.asarray(X))), y,
                            POOL, 0.01)

  run(0)
  before = _finetune._loss_and_grad._cache_size()
  run(1)   # other cones and samples of the same shapes: the same compiled program
  assert _finetune._loss_and_grad._cache_size() == before


@pytest.mark.parametrize("kwargs, message", [
    (dict(A=np.eye(16)), "A must be a conejax.operators operator"),
    (dict(A=operators.identity(7)), "A maps signals of size 7"),
    (dict(A=POOL, X=np.ones((60, 16))), r"X must hold .* \(N, 4\)"),
    (dict(A=POOL, X=np.ones((60, 4)), validation=(np.ones((4, 16)), np.zeros(4))),
     r"validation\[0\] must hold"),
    (dict(A=operators.identity(16), per_sample_operator=True), "per_sample_operator=True"),
    (dict(per_sample_operator=True), "per_sample_operator=True"),
    (dict(A=jax.vmap(operators.mask)(jnp.ones((60, 16)))), "one operator shared"),
])
def test_bad_operators_give_errors_that_name_the_argument(kwargs, message):
  cones, X, y = _problem()
  arguments = dict(X=X, steps=1, key=jax.random.key(0), progress=False) | kwargs
  with pytest.raises(ValueError, match=message):
    conejax.finetune(cones, arguments.pop("X"), y, optax.sgd(0.1), **arguments)
