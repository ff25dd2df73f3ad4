"""Saving and loading trained cones as a single ``.npz`` file, without pickle.

The file holds ``format`` (the string "conejax.cones"), ``version`` (an integer), ``W``
(K, m, d), ``mu_h`` (), ``classes`` (K,) and ``settings`` (a JSON string of how the cones
were trained). ``load`` reads it with ``allow_pickle=False`` and checks every field.
"""

from __future__ import annotations

import json
import os

import numpy as np

from conejax import _checks, _cone

FORMAT = "conejax.cones"
VERSION = 1
_FIELDS = ("format", "version", "W", "mu_h", "classes", "settings")


def save(path, cones: _cone.Cones) -> None:
  """Writes ``cones`` (W of shape (K, m, d)) to ``path``, a ``.npz`` (suffix added if missing)."""
  classes = np.asarray(cones.classes)
  if classes.dtype == object:
    raise ValueError("class labels must be numbers or strings to be saved without pickle.")
  np.savez_compressed(path, format=np.asarray(FORMAT), version=np.asarray(VERSION),
                      W=np.asarray(cones.W), mu_h=np.asarray(cones.mu_h), classes=classes,
                      settings=np.asarray(json.dumps(dict(cones.settings))))


def load(path) -> _cone.Cones:
  """Reads cones written by ``save``: W (K, m, d), mu_h, classes and settings.

  Raises:
    FileNotFoundError: if there is no file at ``path``.
    ValueError: if the file is truncated, not a conejax cones file, of a newer format
      version, or holds inconsistent fields.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"no cones file at {path!r}; save one with conejax.save(path, cones).")
  fields = _checks.read_npz(path, _FIELDS, "a conejax cones file",
                            "save it again with conejax.save")
  if str(fields["format"]) != FORMAT:
    raise ValueError(f"{path!r} holds {str(fields['format'])!r}, not {FORMAT!r}.")
  if int(fields["version"]) > VERSION:
    raise ValueError(f"{path!r} has format version {int(fields['version'])}; this conejax "
                     f"reads up to {VERSION}. Upgrade conejax.")
  W, classes = fields["W"], fields["classes"]
  if W.ndim != 3 or classes.shape != (W.shape[0],):
    raise ValueError(f"{path!r} is inconsistent: W {W.shape} and classes {classes.shape}.")
  settings = json.loads(str(fields["settings"]))
  return _cone.make_cones(W, fields["mu_h"], classes, settings)
