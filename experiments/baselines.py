"""Baselines for the MNIST classification report, in JAX and optax.

Multinomial logistic regression, a one-hidden-layer MLP, and per-class PCA nearest affine
subspaces. Each ``fit_*`` returns a predict function; samples are rows in [0, 1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _train(params, apply, X, y, *, key, epochs, batch_size, learning_rate, augment=None):
  """Adam on the cross entropy, one ``lax.scan`` over the minibatches of an epoch.

  ``augment(key, batch) -> batch`` (e.g. ``conejax.random_shift``) transforms each batch.
  """
  optimizer = optax.adam(learning_rate)
  n_batches = len(X) // batch_size
  X, y = jnp.asarray(X), jnp.asarray(y, jnp.int32)

  def loss(params, xb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(apply(params, xb), yb).mean()

  @jax.jit
  def epoch(params, state, key):
    order = jax.random.permutation(key, len(X))[: n_batches * batch_size]
    batches = order.reshape(n_batches, batch_size)

    def step(carry, xs):
      params, state = carry
      index, i = xs
      xb = X[index] if augment is None else augment(jax.random.fold_in(key, i), X[index])
      grads = jax.grad(loss)(params, xb, y[index])
      updates, state = optimizer.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    (params, state), _ = jax.lax.scan(step, (params, state), (batches, jnp.arange(n_batches)))
    return params, state

  state = optimizer.init(params)
  for key in jax.random.split(key, epochs):
    params, state = epoch(params, state, key)
  jax.block_until_ready(params)
  return params


def fit_logistic(X, y, *, key, epochs=15, batch_size=128, learning_rate=1e-3):
  """Multinomial logistic regression (softmax of a linear map)."""
  params = (jnp.zeros((X.shape[1], 10)), jnp.zeros(10))
  apply = lambda p, x: x @ p[0] + p[1]
  params = _train(params, apply, X, y, key=key, epochs=epochs, batch_size=batch_size,
                  learning_rate=learning_rate)
  return lambda X: np.asarray(jnp.argmax(apply(params, jnp.asarray(X)), axis=1))


def fit_mlp(X, y, *, key, hidden=256, epochs=15, batch_size=128, learning_rate=1e-3,
            augment=None):
  """One hidden ReLU layer of ``hidden`` units, He initialisation; optional augmentation."""
  k1, k2, k3 = jax.random.split(key, 3)
  m = X.shape[1]
  params = (jax.random.normal(k1, (m, hidden)) * jnp.sqrt(2 / m), jnp.zeros(hidden),
            jax.random.normal(k2, (hidden, 10)) * jnp.sqrt(2 / hidden), jnp.zeros(10))
  apply = lambda p, x: jax.nn.relu(x @ p[0] + p[1]) @ p[2] + p[3]
  params = _train(params, apply, X, y, key=k3, epochs=epochs, batch_size=batch_size,
                  learning_rate=learning_rate, augment=augment)
  return lambda X: np.asarray(jnp.argmax(apply(params, jnp.asarray(X)), axis=1))


def fit_pca_subspaces(X, y, *, k=32):
  """Nearest affine subspace: per class, the mean plus its top-k principal directions."""
  classes = np.unique(y)
  models = []
  for c in classes:
    Xc = jnp.asarray(X[y == c])
    mean = Xc.mean(axis=0)
    models.append((mean, jnp.linalg.svd(Xc - mean, full_matrices=False)[2][:k]))

  def predict(X):
    X = jnp.asarray(X)
    residuals = []
    for mean, basis in models:
      centred = X - mean
      residuals.append(jnp.sum(centred**2, axis=1) - jnp.sum((centred @ basis.T) ** 2, axis=1))
    return classes[np.asarray(jnp.argmin(jnp.stack(residuals, axis=1), axis=1))]

  return predict
