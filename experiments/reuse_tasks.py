"""The degradations of experiments/reuse.py: observations v = A u of MNIST digits.

Each task names an operator (2x / 4x average pooling, 50% / 80% missing pixels with one
mask per image, the 5x5 box blur + noise 0.01, Gaussian sensing k = 100 / 200) and the
naive inverse that the clean-trained scikit-learn peers read (bicubic upsampling, zero fill,
the blurred image, minimum-norm least squares).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from conejax import operators

SHAPE, M = (28, 28), 784
BOX = np.ones((5, 5)) / 25
TASKS = {  # name: (label, kind, parameter)
    "pool2": ("2x average pooling", "pool", 2),
    "pool4": ("4x average pooling", "pool", 4),
    "missing50": ("50% missing pixels", "missing", 0.5),
    "missing80": ("80% missing pixels", "missing", 0.8),
    "blur": ("5x5 box blur + noise 0.01", "blur", 0.01),
    "sensing100": ("Gaussian sensing k=100", "sensing", 100),
    "sensing200": ("Gaussian sensing k=200", "sensing", 200),
}
NAIVE = {"pool": "bicubic upsampling", "missing": "zero fill", "blur": "the blurred image",
         "sensing": "minimum-norm least squares"}



def degrade(task, U, rng):
  """Observations of the rows of U: dict(V, A, per_sample) for ``conejax.distance``."""
  _, kind, p = TASKS[task]
  if kind == "pool":
    A = operators.downsample(p, SHAPE)
    return dict(V=np.asarray(operators.apply(A, U)), A=A, per_sample=False)
  if kind == "missing":
    keep = (rng.random(U.shape) >= p).astype(np.float32)
    return dict(V=U * keep, A=jax.vmap(operators.mask)(jnp.asarray(keep)), per_sample=True,
                keep=keep)
  if kind == "blur":
    A = operators.blur(BOX, SHAPE, boundary="zero")
    V = np.asarray(operators.apply(A, U)) + p * rng.standard_normal(U.shape)
    return dict(V=V.astype(np.float32), A=A, per_sample=False)
  A = operators.gaussian_sensing(jax.random.key(p), p, M)
  return dict(V=np.asarray(operators.apply(A, U)), A=A, per_sample=False)


def naive_inverse(task, obs):
  """The naive estimate in the 28 x 28 space, for the clean-trained MLP and regression."""
  from skimage import transform
  _, kind, p = TASKS[task]
  if kind == "pool":
    small = (28 // p, 28 // p)
    return np.stack([transform.resize(v.reshape(small), SHAPE, order=3, mode="edge").reshape(-1)
                     for v in obs["V"]]).astype(np.float32)
  if kind == "sensing":
    dense = np.asarray(operators.materialise(obs["A"]), np.float64)  # the baseline needs it
    return (obs["V"] @ np.linalg.pinv(dense).T).astype(np.float32)
  return obs["V"]


def options(obs):
  return dict(A=obs["A"], per_sample_operator=obs["per_sample"])
