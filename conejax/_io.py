"""Saving and loading trained cones as a single ``.npz`` file, without pickle.

The file holds ``format`` (the string "conejax.cones"), ``version`` (the integer 1), ``W``
(K, m, d), ``mu_h`` (), ``classes`` (K,) and ``settings`` (a JSON string of how the cones
were trained). ``load`` reads it with ``allow_pickle=False`` and checks every field.

Paths follow one suffix rule both ways: a path without the ``.npz`` suffix gets it (as
``numpy.savez`` does), so ``save("c", cones)`` writes ``c.npz`` and ``load("c")`` reads it.
Binary file objects work both ways too.
"""

from __future__ import annotations

import json
import os

import numpy as np

from conejax import _checks, _cone

FORMAT = "conejax.cones"
VERSION = 1
_FIELDS = ("format", "version", "W", "mu_h", "classes", "settings")
_FIX = "save it again with conejax.save"


def _path(path):
  """A file object as it is; a path with the ``.npz`` suffix added if it is missing."""
  if hasattr(path, "read") or hasattr(path, "write"):
    return path
  path = os.fspath(path)
  return path if str(path).endswith(".npz") else f"{path}.npz"


def _json_value(value):
  """numpy scalars and arrays as Python numbers and lists, for ``json.dumps``."""
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"settings value {value!r} of type {type(value).__name__} cannot be saved; "
                  "settings hold numbers, strings, booleans and lists of them.")


def save(path, cones: _cone.Cones) -> None:
  """Writes ``cones`` (W of shape (K, m, d)) to ``path``: a ``.npz`` (suffix added if
  missing) or a binary file object.

  Raises:
    TypeError: if ``cones`` is not ``Cones``, is traced (inside ``jit``) or its settings
      hold values JSON cannot represent.
    ValueError: if the class labels are not numbers or strings.
  """
  if not isinstance(cones, _cone.Cones):
    raise TypeError(f"save writes conejax.Cones; got {type(cones).__name__}. Build them with "
                    "conejax.make_cones(W) or conejax.fit_cones.")
  _checks.require_concrete("save", "Save the cones outside jit.", W=cones.W, mu_h=cones.mu_h)
  classes = np.asarray(cones.classes)
  if classes.dtype == object:
    raise ValueError("class labels must be numbers or strings to be saved without pickle.")
  settings = json.dumps(dict(cones.settings), default=_json_value)
  np.savez_compressed(_path(path), format=np.asarray(FORMAT), version=np.asarray(VERSION),
                      W=np.asarray(cones.W), mu_h=np.asarray(cones.mu_h), classes=classes,
                      settings=np.asarray(settings))


def _field(fields, name, path, kinds, ndim):
  """The field ``name`` checked for its dtype kind and rank."""
  value = fields[name]
  if value.dtype.kind not in kinds or value.ndim != ndim:
    raise ValueError(f"{path!r} is not a valid conejax cones file: field {name!r} has dtype "
                     f"{value.dtype} and shape {value.shape}; {_FIX}.")
  return value


def load(path) -> _cone.Cones:
  """Reads cones written by ``save`` from a path (``.npz`` suffix added if missing) or a
  binary file object: W (K, m, d), mu_h, classes and settings.

  Raises:
    FileNotFoundError: if there is no file at ``path``.
    ValueError: if the file is truncated or corrupted, not a conejax cones file, of
      another format version than 1, or holds invalid or inconsistent fields.
  """
  if not hasattr(path, "read"):
    given = path
    path = os.fspath(path)
    if not os.path.exists(path):
      path = _path(path)
    if not os.path.exists(path):
      raise FileNotFoundError(f"no cones file at {str(given)!r}; save one with "
                              "conejax.save(path, cones).")
  name = str(getattr(path, "name", path))
  fields = _checks.read_npz(path, _FIELDS, "a conejax cones file", _FIX)
  if fields["format"].dtype.kind != "U" or str(fields["format"]) != FORMAT:
    raise ValueError(f"{name!r} holds {str(fields['format'])[:80]!r}, not {FORMAT!r}; it is not "
                     "a conejax cones file.")
  version = fields["version"]
  if version.dtype.kind not in "iu" or version.ndim != 0 or int(version) < 1:
    raise ValueError(f"{name!r} has an invalid format version {version.tolist()!r} (an "
                     f"integer, {VERSION} for this conejax); {_FIX}.")
  if int(version) != VERSION:
    raise ValueError(f"{name!r} has format version {int(version)}; this conejax reads "
                     f"version {VERSION}. Upgrade conejax.")
  W = _field(fields, "W", name, "f", 3)
  mu_h = _field(fields, "mu_h", name, "f", 0)
  classes = _field(fields, "classes", name, "biufU", 1)
  text = _field(fields, "settings", name, "U", 0)
  if classes.shape != (W.shape[0],):
    raise ValueError(f"{name!r} is inconsistent: W {W.shape} and classes {classes.shape}; "
                     f"{_FIX}.")
  try:
    settings = json.loads(str(text))
  except ValueError as error:
    raise ValueError(f"{name!r} has unreadable settings ({error}); {_FIX}.") from error
  if not isinstance(settings, dict):
    raise ValueError(f"{name!r} has settings {type(settings).__name__}, not a JSON object; "
                     f"{_FIX}.")
  settings = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
  try:
    return _cone.make_cones(W, mu_h, classes, settings)
  except ValueError as error:
    raise ValueError(f"{name!r} holds invalid cones: {error}") from error
