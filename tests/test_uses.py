"""Plug-and-play uses: anomaly scores, compression, k-cones clustering; the MNIST loader."""

import hashlib

import jax
import numpy as np
import pytest
from scipy.optimize import nnls

import conejax
from conejax import data
from helpers import MNIST

KEY = jax.random.key(0)


def _two_cones():
  rng = np.random.default_rng(0)
  W = np.zeros((2, 20, 3))
  W[0, :10], W[1, 10:] = rng.random((10, 3)), rng.random((10, 3))
  W /= np.linalg.norm(W, axis=1, keepdims=True)
  return conejax.make_cones(W, 0.0)


def test_anomaly_score_is_the_distance_to_the_nearest_cone():
  cones = _two_cones()
  rng = np.random.default_rng(1)
  inside = rng.random((5, 3)) @ np.asarray(cones.W[0]).T
  outside = rng.random((5, 20))
  score_in = np.asarray(conejax.anomaly_score(cones, inside))
  score_out = np.asarray(conejax.anomaly_score(cones, outside))
  np.testing.assert_allclose(score_in, 0, atol=1e-8)
  assert np.all(score_out > 0.1)
  np.testing.assert_allclose(score_out, np.min(conejax.distance(cones, outside), axis=1))


def test_compress_keeps_n_nonzero_and_refits_exactly():
  rng = np.random.default_rng(2)
  W, X = rng.random((15, 6)), rng.random((10, 15))
  for n in (1, 2, 6):
    H, error = conejax.compress(W, X, n)
    H = np.asarray(H)
    assert np.all(np.sum(H > 0, axis=1) <= n)
    for h, x, e in zip(H, X, np.asarray(error)):
      support = np.flatnonzero(h)
      if support.size:
        exact = nnls(W[:, support], x)[0]
        np.testing.assert_allclose(h[support], exact, atol=1e-7)
      np.testing.assert_allclose(e, np.linalg.norm(x - W @ h) / np.linalg.norm(x), rtol=1e-7)
  full = np.asarray(conejax.compress(W, X, 6)[1])
  assert np.all(np.asarray(conejax.compress(W, X, 1)[1]) >= full - 1e-9)
  with pytest.raises(ValueError, match="exceeds the 6 atoms"):
    conejax.compress(W, X, 7)


COMPRESS_SCRIPT = """
import numpy as np, conejax
rng = np.random.default_rng(0)
W = rng.random((100, 64)).astype(np.float32) ** 4
X = (rng.random((200, 64)) ** 3 @ W.T).astype(np.float32)
H, error = conejax.compress(W, X, 5)
print("done", int(np.max(np.sum(np.asarray(H) > 0, axis=1))), float(np.max(error)))
"""


def test_compress_finishes_at_the_default_compiler_level():
  """compress refits on each sample's support by a vmapped active set with a per-sample G.
  Solving a single block of rows without a loop there deadlocked XLA:CPU at its default
  flags (the main job hung); this shape did, in a process with XLA's default flags."""
  import os
  import subprocess
  import sys
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  run = subprocess.run([sys.executable, "-c", COMPRESS_SCRIPT], capture_output=True,
                       text=True, env=dict(env, JAX_PLATFORMS="cpu"), timeout=180, check=False)
  assert run.returncode == 0, run.stderr[-2000:]
  done = [line.split() for line in run.stdout.split("\n") if line.startswith("done")]
  assert len(done) == 1 and int(done[0][1]) <= 5 and 0 < float(done[0][2]) < 1, run.stdout


def test_kcones_separates_two_cones():
  cones = _two_cones()
  rng = np.random.default_rng(3)
  X = np.concatenate([rng.random((40, 3)) @ np.asarray(cones.W[k]).T for k in (0, 1)])
  truth = np.repeat([0, 1], 40)
  labels, fitted = conejax.kcones(X, 2, 3, key=KEY, n_iter=5, max_iter=50)
  agreement = max(np.mean(labels == truth), np.mean(labels != truth))
  assert agreement == 1.0 and fitted.W.shape == (2, 20, 3)
  with pytest.raises(ValueError, match="need at least"):
    conejax.kcones(X[:5], 2, 3, key=KEY)


def test_embedded_mnist_subset():
  x_train, y_train, x_test, y_test = data.load_mnist()
  assert x_train.shape == (10000, 784) and x_test.shape == (2000, 784)
  assert x_train.dtype == np.float32 and 0 <= x_train.min() and x_train.max() <= 1
  assert np.all(np.bincount(y_train) == 1000) and np.all(np.bincount(y_test) == 200)


def test_download_checks_the_sha256_against_a_local_file(tmp_path):
  if not MNIST.exists():
    pytest.skip("no local MNIST")
  digest = hashlib.sha256(MNIST.read_bytes()).hexdigest()
  url = MNIST.resolve().as_uri()
  x_train, _, x_test, _ = data.load_mnist(tmp_path / "m.npz", download=True, url=url,
                                          sha256=digest)
  assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
  with pytest.raises(ValueError, match="expected"):
    data.load_mnist(tmp_path / "other.npz", download=True, url=url, sha256="0" * 64)
  assert not (tmp_path / "other.npz").exists()
  with pytest.raises(FileNotFoundError, match="download=True"):
    data.load_mnist(tmp_path / "absent.npz")
  (tmp_path / "bad.npz").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="truncated or not an .npz"):
    data.load_mnist(tmp_path / "bad.npz")


def test_small_clusters_are_refilled_without_draining_donors():
  from conejax import _uses
  labels = np.array([0] * 5 + [1] * 3 + [2] * 1)
  residual = np.arange(9.0)[::-1]  # sample 0 is the worst explained
  refilled = _uses._refill_small_clusters(labels, 4, 2, residual)
  counts = np.bincount(refilled, minlength=4)
  assert np.all(counts >= 2) and counts.sum() == 9
  np.testing.assert_array_equal(refilled, [2, 3, 3, 0, 0, 1, 1, 1, 2])  # worst first
