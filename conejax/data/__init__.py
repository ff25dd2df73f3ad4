"""Data: MNIST, embedded (a 12,000-image subset) or read from a full ``mnist.npz``.

Images come back as float32 rows in [0, 1] (N, 784) with uint8 labels (N,).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import tempfile
import urllib.request

import numpy as np

from conejax import _checks

SUBSET = pathlib.Path(__file__).resolve().parent / "mnist_subset.npz"
MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _sha256(path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def fetch(path, *, url: str = MNIST_URL, sha256: str = MNIST_SHA256) -> pathlib.Path:
  """Fetches ``url`` to ``path`` and checks its sha256; a mismatch leaves no file behind."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
    with urllib.request.urlopen(url) as response:
      shutil.copyfileobj(response, tmp)
  digest = _sha256(tmp.name)
  if digest != sha256:
    os.unlink(tmp.name)
    raise ValueError(f"the file from {url} has sha256 {digest}, expected {sha256}; it was "
                     "not kept. Check the URL or pass the expected sha256.")
  os.replace(tmp.name, path)
  return path


def load_mnist(path=None, *, download: bool = False, url: str = MNIST_URL,
               sha256: str = MNIST_SHA256):
  """MNIST as float32 rows in [0, 1] and uint8 labels.

  Args:
    path: a full ``mnist.npz`` (keys x_train, y_train, x_test, y_test). None reads the
      embedded subset: 1000 training and 200 test images per digit.
    download: if ``path`` does not exist, fetch ``url`` there and check ``sha256`` (the
      standard Keras ``mnist.npz`` by default).

  Returns:
    x_train (N, 784), y_train (N,), x_test (M, 784), y_test (M,).

  Raises:
    FileNotFoundError: if ``path`` is missing and ``download`` is False.
    ValueError: if the file is corrupted or lacks a key, or a download fails its check.
  """
  path = SUBSET if path is None else pathlib.Path(path)
  if not path.exists():
    if not download:
      raise FileNotFoundError(f"no MNIST file at {str(path)!r}; pass download=True to fetch "
                              "it, or path=None for the embedded subset.")
    fetch(path, url=url, sha256=sha256)
  arrays = _checks.read_npz(path, _KEYS, "an MNIST file",
                            "pass the standard mnist.npz, or path=None for the embedded subset")
  rows = lambda x: (x.reshape(len(x), -1) / np.float32(255)).astype(np.float32)
  return rows(arrays["x_train"]), arrays["y_train"], rows(arrays["x_test"]), arrays["y_test"]
