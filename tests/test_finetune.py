"""finetune: its losses against direct formulas, one step against a hand-written step."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import conejax
from conejax import _finetune, solvers
from helpers import two_classes as _two_classes

# The solver finetune builds from solver="auto", tol=1e-12, max_iter=5000 (exact codes).
EXACT = solvers.resolve("auto", max_iter=5000, tol=1e-12)


def test_squared_distances_equal_those_of_distance():
  cones, X, _, _ = _two_classes()
  np.testing.assert_allclose(
      _finetune.squared_distances(cones.W, jnp.asarray(X), cones.mu_h, solver=EXACT),
      conejax.distance(cones, X, tol=1e-12) ** 2, rtol=1e-9)


def test_cross_entropy_loss_is_the_softmax_cross_entropy():
  rng = np.random.default_rng(1)
  D2, labels = rng.random((7, 3)) * 5, rng.integers(0, 3, 7)
  logits = -D2 / 2.0
  expected = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(7), labels])
  np.testing.assert_allclose(_finetune.cross_entropy_loss(D2, labels, 2.0), expected)


def test_adversarial_loss_is_own_minus_tau_times_others():
  rng = np.random.default_rng(2)
  D2, labels = rng.random((9, 3)), np.array([0, 0, 1, 1, 1, 2, 0, 2, 1])
  expected = sum(D2[labels == k, k].mean() - 0.3 * D2[labels != k, k].mean() for k in range(3))
  np.testing.assert_allclose(_finetune.adversarial_loss(D2, labels, 0.3), expected)


def test_project_dictionaries_keeps_zero_atoms_and_normalises_the_rest():
  W = jnp.array([[[1.0, -1.0, 3.0], [-2.0, -1.0, 4.0]]]).transpose(0, 2, 1)  # (1, 3, 2)
  P = _finetune.project_dictionaries(W)
  assert jnp.all(P >= 0)
  np.testing.assert_allclose(jnp.linalg.norm(P, axis=1), [[1.0, 1.0]])
  np.testing.assert_allclose(_finetune.project_dictionaries(jnp.zeros((1, 3, 2))), 0)


def test_one_step_is_a_projected_optax_step_on_the_full_batch():
  cones, X, y, _ = _two_classes()
  counter = itertools.count()  # a score that always improves: the last cones are returned
  out = conejax.finetune(cones, X, y, optax.sgd(0.05), steps=1, key=jax.random.key(0),
                         batch_size=len(y), validation=(X[:4], y[:4]), eval_every=1,
                         score=lambda c: next(counter), tol=1e-12, max_iter=5000,
                         progress=False)
  loss = lambda W: _finetune.cross_entropy_loss(
      _finetune.squared_distances(W, jnp.asarray(X), cones.mu_h, solver=EXACT),
      jnp.asarray(y), 1.0)
  expected = _finetune.project_dictionaries(cones.W - 0.05 * jax.grad(loss)(cones.W))
  np.testing.assert_allclose(out.cones.W, expected, rtol=1e-6, atol=1e-9)
  assert out.best_step == 1 and list(out.history.step) == [0, 1]
  np.testing.assert_allclose(out.history.train_loss[1], loss(cones.W), rtol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_fine_tuning_learns_the_classes(dtype):
  cones, X, y, _ = _two_classes(3, n=400)
  cones = conejax.make_cones(cones.W.astype(dtype))
  out = conejax.finetune(cones, X.astype(dtype), y, optax.adam(0.05), steps=60,
                         key=jax.random.key(1), batch_size=32, validation=0.25, eval_every=20,
                         temperature=0.05, progress=False)
  history = out.history
  assert history.val_score[0] < 0.9 and max(history.val_score) >= 0.97
  assert history.val_loss[-1] < 0.5 * history.val_loss[0]
  assert out.cones.W.dtype == dtype and jnp.all(out.cones.W >= 0)
  np.testing.assert_allclose(jnp.linalg.norm(out.cones.W, axis=1), 1, rtol=1e-5)
  assert dict(out.cones.settings)["finetune"] == "cross_entropy"
  assert conejax.score(out.cones, X, y) >= 0.95


def test_adversarial_fine_tuning_widens_the_discrepancy():
  cones, X, y, _ = _two_classes(4, n=200)
  start = conejax.fit_cones(X, y, 2, key=jax.random.key(0), init="random", max_iter=50)

  def discrepancy(c):  # minus the adversarial objective (tau = 0.5), from conejax.distance
    D2 = np.asarray(conejax.distance(c, X)) ** 2
    return float(sum(0.5 * D2[y != k, k].mean() - D2[y == k, k].mean() for k in (0, 1)))

  out = conejax.finetune(start, X, y, optax.adam(0.02), steps=40, key=jax.random.key(2),
                         objective="adversarial", tau=0.5, batch_size=50, eval_every=10,
                         score=discrepancy, progress=False)
  assert out.history.val_loss[-1] < out.history.val_loss[0]
  assert discrepancy(out.cones) > discrepancy(start) + 0.1


def test_patience_stops_after_evaluations_without_improvement():
  cones, X, y, _ = _two_classes()
  out = conejax.finetune(cones, X, y, optax.adam(0.01), steps=100, key=jax.random.key(0),
                         batch_size=8, eval_every=1, patience=2, score=lambda c: 0.0,
                         progress=False)
  assert list(out.history.step) == [0, 1, 2] and out.best_step == 0
  np.testing.assert_allclose(out.cones.W, _finetune.project_dictionaries(cones.W))


@pytest.mark.parametrize("kwargs, message", [
    (dict(y=np.full(60, 7)), "no cone"),
    (dict(validation=1.5), "fraction"),
    (dict(batch_size=1000), "batch_size"),
    (dict(temperature=0.0), "temperature"),
    (dict(tau=-1.0), "tau"),
    (dict(objective="hinge"), "objective"),
    (dict(solver="newton"), "solver must be one of"),
    (dict(solver=solvers.APG(), max_iter=10), "settings of the solver"),
    (dict(max_iter=0), "max_iter must be a positive integer"),
    (dict(y=np.zeros(3)), "one label per row"),
    (dict(augment="shift", batch_size=8), "augment must be a function"),
    (dict(augment=lambda key, batch: batch[:, :-1], batch_size=8), "shape and dtype"),
    (dict(augment=lambda key, batch: batch.astype(jnp.float16), batch_size=8),
     "shape and dtype"),
])
def test_bad_inputs_give_clear_errors(kwargs, message):
  cones, X, y, _ = _two_classes()
  arguments = dict(y=y, steps=1, key=jax.random.key(0), progress=False) | kwargs
  with pytest.raises(ValueError, match=message):
    conejax.finetune(cones, X, arguments.pop("y"), optax.sgd(0.1), **arguments)


def test_augment_transforms_each_training_batch_before_the_step():
  cones, X, y, _ = _two_classes()
  counter = itertools.count()
  out = conejax.finetune(cones, X, y, optax.sgd(0.05), steps=1, key=jax.random.key(0),
                         batch_size=len(y), validation=(X[:4], y[:4]), eval_every=1,
                         score=lambda c: next(counter), tol=1e-12, max_iter=5000,
                         augment=lambda key, batch: 0.5 * batch, progress=False)
  loss = lambda W: _finetune.cross_entropy_loss(
      _finetune.squared_distances(W, 0.5 * jnp.asarray(X), cones.mu_h, solver=EXACT),
      jnp.asarray(y), 1.0)
  expected = _finetune.project_dictionaries(cones.W - 0.05 * jax.grad(loss)(cones.W))
  np.testing.assert_allclose(out.cones.W, expected, rtol=1e-6, atol=1e-9)


def _translated(image, dr, dc):
  """image shifted down by dr and right by dc, zeros filling in (numpy reference)."""
  out = np.zeros_like(image)
  rows, cols = image.shape
  out[max(dr, 0):rows + min(dr, 0), max(dc, 0):cols + min(dc, 0)] = \
      image[max(-dr, 0):rows + min(-dr, 0), max(-dc, 0):cols + min(-dc, 0)]
  return out


@pytest.mark.parametrize("jit", [False, True])
def test_random_shift_translates_each_image_by_one_of_the_allowed_offsets(jit):
  rng = np.random.default_rng(5)
  images = rng.permutation(400 * 6 * 7).reshape(400, 6, 7).astype(np.float64) + 1
  shift = conejax.random_shift
  if jit:
    shift = jax.jit(shift, static_argnames=("image_shape", "max_shift"))
  out = np.asarray(shift(jax.random.key(3), jnp.asarray(images.reshape(400, 42)),
                         image_shape=(6, 7), max_shift=2))
  seen = set()
  for image, result in zip(images, out.reshape(400, 6, 7)):
    matches = [(dr, dc) for dr in range(-2, 3) for dc in range(-2, 3)
               if np.array_equal(_translated(image, dr, dc), result)]
    assert len(matches) == 1
    seen.add(matches[0])
  assert len(seen) == 25  # every offset in {-2..2}^2 is drawn
  np.testing.assert_array_equal(conejax.random_shift(jax.random.key(0), images.reshape(400, 42),
                                                     (6, 7), max_shift=0),
                                images.reshape(400, 42))


@pytest.mark.parametrize("X, max_shift, message", [
    (np.ones((3, 40)), 1, "images of shape"),
    (np.ones((3, 42)), -1, "max_shift"),
    (np.ones((3, 42)), 1.5, "whole number"),
])
def test_random_shift_bad_inputs_give_clear_errors(X, max_shift, message):
  with pytest.raises(ValueError, match=message):
    conejax.random_shift(jax.random.key(0), jnp.asarray(X), (6, 7), max_shift=max_shift)
