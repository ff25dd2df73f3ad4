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
  return (*_split(arrays, "train", path), *_split(arrays, "test", path))


def _split(arrays, part, path):
  """(x, y) of one split: images as float32 rows in [0, 1], labels checked against them.

  uint8 images (0..255, the standard file) are divided by 255; floating images already
  in [0, 1] are kept as they are; anything else is rejected rather than guessed at.
  """
  x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
  where = f"{str(path)!r}: x_{part}"
  if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
    raise ValueError(f"{where} has shape {x.shape} and y_{part} {y.shape}; they need one label "
                     "per image (x (N, 28, 28) or (N, 784), y (N,)).")
  if x.dtype.kind in "ui":
    if x.size and (x.min() < 0 or x.max() > 255):
      raise ValueError(f"{where} holds integers outside 0..255; pass 8-bit images.")
    x = x / np.float32(255)
  elif x.dtype.kind == "f":
    if x.size and not (np.all(np.isfinite(x)) and x.min() >= 0 and x.max() <= 1):
      raise ValueError(f"{where} is floating but not in [0, 1] (or not finite); pass uint8 "
                       "images (0..255) or floats in [0, 1].")
  else:
    raise ValueError(f"{where} has dtype {x.dtype}; pass uint8 images or floats in [0, 1].")
  if y.dtype.kind not in "ui":
    raise ValueError(f"{str(path)!r}: y_{part} has dtype {y.dtype}; labels must be integers.")
  return x.reshape(len(x), int(np.prod(x.shape[1:]))).astype(np.float32), y
