"""Shared references and small problems for the tests."""

from __future__ import annotations

import functools
import pathlib

import numpy as np
import pytest

MNIST = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist.npz"

TOL = {np.float32: 1e-4, np.float64: 1e-6}  # relative objective gaps the issue asks for


@functools.lru_cache(maxsize=None)
def _mnist():
  if not MNIST.exists():
    pytest.skip(f"MNIST not found at {MNIST}")
  with np.load(MNIST, allow_pickle=False) as data:
    return data["x_train"][:6000], data["y_train"][:6000], data["x_test"][:2000]


def mnist_train(n: int, dtype=np.float32):
  """The first n training images as rows in [0, 1], and their labels."""
  x, y, _ = _mnist()
  return (x[:n].reshape(n, -1) / 255.0).astype(dtype), y[:n]


def mnist_test(n: int, dtype=np.float32):
  _, _, x = _mnist()
  return (x[:n].reshape(n, -1) / 255.0).astype(dtype)


def two_classes(seed=0, n=60, m=10, d=2):
  """Fine-tuning problem: class k lives in the cone of its own non-negative atoms, plus
  noise; returns poor, random cones with unit atoms, X (n, m), y (n,) and the generator."""
  import conejax
  rng = np.random.default_rng(seed)
  atoms = rng.random((2, m, d)) ** 3
  y = np.repeat([0, 1], n // 2)
  X = np.einsum("nd,nmd->nm", rng.random((n, d)), atoms[y]) + 0.05 * rng.random((n, m))
  start = np.abs(rng.standard_normal((2, m, d)))
  start = conejax.make_cones(start / np.linalg.norm(start, axis=1, keepdims=True))
  return start, X, y, rng


def random_problem(seed: int, m: int, d: int, n: int, dtype=np.float64):
  """A non-negative dictionary (m, d) and samples (n, m) of mixed sign."""
  rng = np.random.default_rng(seed)
  W = rng.random((m, d)).astype(dtype)
  V = rng.random((n, d)).astype(dtype) @ W.T + rng.standard_normal((n, m)).astype(dtype)
  return W, V


def nnls_objective(W, V, H, mu=0.0):
  """0.5 ||W h - v||^2 + mu sum(h) per row, in float64."""
  W, V, H = (np.asarray(a, np.float64) for a in (W, V, H))
  return 0.5 * np.sum((H @ W.T - V) ** 2, axis=-1) + mu * np.sum(H, axis=-1)


def scipy_nnls(W, V):
  from scipy.optimize import nnls
  W = np.asarray(W, np.float64)
  return np.stack([nnls(W, v, maxiter=50 * W.shape[1])[0] for v in np.asarray(V, np.float64)])
