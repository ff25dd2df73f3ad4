"""Fuzz cases for save / load and data.load_mnist: round trips in every path form,
foreign files, truncation at every offset class, every member corrupted, deleted or
replaced by a bad value. Every failure is a conejax ValueError / FileNotFoundError /
TypeError naming the file and the fix, never zlib, zipfile, json or numpy's own error.
"""

import io
import json
import pathlib
import struct
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conejax
from conejax import data
from fuzz_common import M, dictionaries, raises_clearly

FIELDS = ("format", "version", "W", "mu_h", "classes", "settings")


def _cones(classes=None, settings=None, mu_h=0.25):
  return conejax.make_cones(dictionaries(), mu_h, classes, settings or dict(rank=4, init="kmeans"))


def _same(a, b):
  np.testing.assert_array_equal(np.asarray(a.W), np.asarray(b.W))
  assert float(a.mu_h) == float(b.mu_h)
  assert a.classes == b.classes and a.settings == b.settings


def _fields(cones=None):
  cones = cones or _cones()
  return dict(format=np.asarray("conejax.cones"), version=np.asarray(1), W=np.asarray(cones.W),
              mu_h=np.asarray(cones.mu_h), classes=np.asarray(cones.classes),
              settings=np.asarray(json.dumps(dict(cones.settings))))


def _write(path, **fields):
  np.savez_compressed(path, **fields)
  return path


# ---------------------------------------------------------------- round trips
ROUND_TRIPS = {
    "npz_suffix": ("c.npz", "c.npz"),
    "no_suffix": ("c", "c"),
    "no_suffix_loaded_with_suffix": ("c", "c.npz"),
    "suffix_loaded_without": ("c.npz", "c"),
    "pathlib": (pathlib.Path("c"), pathlib.Path("c")),
    "nested_dir": ("sub/c", "sub/c.npz"),
}


@pytest.mark.parametrize("case", ROUND_TRIPS)
def test_round_trip_paths(case, tmp_path):
  saved, loaded = ROUND_TRIPS[case]
  (tmp_path / "sub").mkdir()
  conejax.save(tmp_path / saved, _cones())
  _same(conejax.load(tmp_path / loaded), _cones())
  assert [p.name for p in tmp_path.rglob("*.npz")] == ["c.npz"]


def test_round_trip_bytes_io():
  buffer = io.BytesIO()
  conejax.save(buffer, _cones())
  buffer.seek(0)
  _same(conejax.load(buffer), _cones())


def test_round_trip_open_files(tmp_path):
  with open(tmp_path / "f.bin", "wb") as f:
    conejax.save(f, _cones())
  with open(tmp_path / "f.bin", "rb") as f:
    _same(conejax.load(f), _cones())


@pytest.mark.parametrize("classes", [["a", "b", "c"], [0.5, 1.5, 2.5], [3, 7, 42]])
def test_round_trip_labels(classes, tmp_path):
  conejax.save(tmp_path / "c", _cones(classes))
  loaded = conejax.load(tmp_path / "c")
  assert loaded.classes == tuple(classes)


@pytest.mark.parametrize("settings", [dict(rank=np.int64(4), tol=np.float32(0.5)),
                                      dict(sizes=np.arange(3), flag=np.bool_(True)),
                                      dict(nested=[1, [2, 3]], name="x", none=None)],
                         ids=["numpy_scalars", "numpy_array_and_bool", "nested_lists"])
def test_round_trip_settings(settings, tmp_path):
  conejax.save(tmp_path / "c", _cones(settings=settings))
  _same(conejax.load(tmp_path / "c"), _cones(settings=settings))


def test_settings_numpy_scalars_in_raw_cones(tmp_path):
  cones = conejax.Cones(jnp.asarray(dictionaries()), jnp.float32(0), (0, 1, 2),
                        (("rank", np.int64(4)),))
  conejax.save(tmp_path / "c", cones)
  assert dict(conejax.load(tmp_path / "c").settings) == dict(rank=4)


def test_round_trip_preserves_float64(tmp_path):
  cones = conejax.make_cones(dictionaries().astype(np.float64))
  conejax.save(tmp_path / "c", cones)
  assert conejax.load(tmp_path / "c").W.dtype == np.float64
  _same(conejax.load(tmp_path / "c"), cones)


# ---------------------------------------------------------------- save errors
def test_save_needs_cones(tmp_path):
  raises_clearly(TypeError, "save writes conejax.Cones", conejax.save, tmp_path / "c",
                 dictionaries())


def test_save_under_jit_says_so(tmp_path):
  fn = jax.jit(lambda W: conejax.save(tmp_path / "c", conejax.Cones(W, jnp.float32(0))))
  raises_clearly(TypeError, "save got traced", fn, dictionaries())


def test_save_rejects_unserialisable_settings(tmp_path):
  cones = conejax.Cones(jnp.asarray(dictionaries()), jnp.float32(0), (0, 1, 2),
                        (("fn", print),))
  raises_clearly(TypeError, "cannot be saved", conejax.save, tmp_path / "c", cones)


# ---------------------------------------------------------------- missing and foreign
@pytest.mark.parametrize("name", ["nothing", "nothing.npz", "dir/nothing"])
def test_missing_file(name, tmp_path):
  raises_clearly(FileNotFoundError, "no cones file at", conejax.load, tmp_path / name)


def _zip_with_text(path):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("hello.txt", "hi")
  return path


FOREIGN = {
    "empty": lambda p: p.write_bytes(b"") and p or p,
    "text": lambda p: p.write_text("W = [[1, 2]]") and p,
    "random_bytes": lambda p: p.write_bytes(np.random.default_rng(0).bytes(300)) and p,
    "png_header": lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100)) and p,
    "gzip": lambda p: p.write_bytes(b"\x1f\x8b\x08\x00" + bytes(50)) and p,
    "npy_not_npz": lambda p: (np.save(open(p, "wb"), np.ones(3)), p)[1],
    "zip_of_text": _zip_with_text,
    "mnist_npz": lambda p: _write(p, x_train=np.zeros((2, 28, 28), np.uint8),
                                  y_train=np.zeros(2, np.uint8)),
    "pickled_member": lambda p: _write(p, **dict(_fields(), W=np.array([None, 1], object))),
}
FOREIGN_MESSAGES = {"zip_of_text": "is not a conejax cones file: fields",
                    "mnist_npz": "is not a conejax cones file: fields",
                    "pickled_member": "could not be read without pickle"}


@pytest.mark.parametrize("kind", FOREIGN)
def test_foreign_files(kind, tmp_path):
  path = FOREIGN[kind](tmp_path / "f.npz")
  match = FOREIGN_MESSAGES.get(kind, "is truncated or not an .npz file")
  raises_clearly(ValueError, match, conejax.load, path)


def test_directory_is_not_a_cones_file(tmp_path):
  (tmp_path / "d.npz").mkdir()
  raises_clearly(ValueError, "is truncated or not an .npz file", conejax.load, tmp_path / "d.npz")


# ---------------------------------------------------------------- truncation
@pytest.mark.parametrize("cut", ["0", "1", "4", "22", "30", "10%", "25%", "50%", "75%", "90%",
                                 "-22", "-1"])
def test_truncated_files(cut, tmp_path):
  conejax.save(tmp_path / "c", _cones())
  raw = (tmp_path / "c.npz").read_bytes()
  n = len(raw) * int(cut[:-1]) // 100 if cut.endswith("%") else int(cut) % len(raw)
  (tmp_path / "t.npz").write_bytes(raw[:n])
  raises_clearly(ValueError, "truncated|corrupted|not a conejax cones file", conejax.load,
                 tmp_path / "t.npz")


def test_truncated_file_object():
  buffer = io.BytesIO()
  conejax.save(buffer, _cones())
  raises_clearly(ValueError, "truncated", conejax.load, io.BytesIO(buffer.getvalue()[:100]))


# ---------------------------------------------------------------- every member
def _member_data_span(raw, info):
  """(start, end) of a member's compressed bytes in the archive."""
  start = info.header_offset
  name_length, extra_length = struct.unpack("<HH", raw[start + 26:start + 30])
  data = start + 30 + name_length + extra_length
  return data, data + info.compress_size


@pytest.mark.parametrize("member", FIELDS)
def test_corrupted_member(member, tmp_path):
  conejax.save(tmp_path / "c", _cones())
  raw = bytearray((tmp_path / "c.npz").read_bytes())
  with zipfile.ZipFile(tmp_path / "c.npz") as z:
    start, end = _member_data_span(raw, z.getinfo(member + ".npy"))
  for i in range(start + (end - start) // 3, start + 2 * (end - start) // 3 + 1):
    raw[i] ^= 0x5A
  (tmp_path / "bad.npz").write_bytes(bytes(raw))
  raises_clearly(ValueError, "corrupted", conejax.load, tmp_path / "bad.npz")


@pytest.mark.parametrize("member", FIELDS)
def test_missing_member(member, tmp_path):
  fields = _fields()
  del fields[member]
  path = _write(tmp_path / "c.npz", **fields)
  raises_clearly(ValueError, rf"fields \['{member}'\] are missing", conejax.load, path)


@pytest.mark.parametrize("member", ["W", "settings"])
@pytest.mark.parametrize("header", ["magic", "dict"])
def test_corrupted_npy_header(member, header, tmp_path):
  path = _write(tmp_path / "c.npz", **_fields())
  with zipfile.ZipFile(path) as z:
    members = {name: z.read(name) for name in z.namelist()}
  body = bytearray(members[member + ".npy"])
  if header == "magic":
    body[:6] = b"NOTNPY"
  else:
    body[10:20] = b"{'descr': "[:10]
    body[12:18] = b"!!!!!!"
  members[member + ".npy"] = bytes(body)
  with zipfile.ZipFile(path, "w") as z:
    for name, content in members.items():
      z.writestr(name, content)
  raises_clearly(ValueError, "corrupted", conejax.load, path)


BAD_FIELDS = {
    "format_other": (dict(format=np.asarray("conejax.other")), "not 'conejax.cones'"),
    "format_number": (dict(format=np.asarray(3)), "not 'conejax.cones'"),
    "version_zero": (dict(version=np.asarray(0)), "invalid format version 0"),
    "version_negative": (dict(version=np.asarray(-1)), "invalid format version -1"),
    "version_float": (dict(version=np.asarray(1.9)), "invalid format version 1.9"),
    "version_float_one": (dict(version=np.asarray(1.0)), "invalid format version 1.0"),
    "version_string": (dict(version=np.asarray("1")), "invalid format version '1'"),
    "version_array": (dict(version=np.asarray([1])), r"invalid format version \[1\]"),
    "version_bool": (dict(version=np.asarray(True)), "invalid format version True"),
    "version_newer": (dict(version=np.asarray(2)), "format version 2; this conejax reads version 1"),
    "W_two_dim": (dict(W=dictionaries()[0]), "field 'W' has dtype float32 and shape"),
    "W_int": (dict(W=np.ones((3, M, 4), np.int32)), "field 'W' has dtype int32"),
    "W_nan": (dict(W=np.full((3, M, 4), np.nan, np.float32)), "W contains NaN or Inf"),
    "W_negative": (dict(W=-dictionaries()), "W has negative entries"),
    "W_empty": (dict(W=np.ones((3, M, 0), np.float32)), "W has an empty axis"),
    "mu_h_negative": (dict(mu_h=np.asarray(-1.0)), "mu_h must be a finite number >= 0"),
    "mu_h_nan": (dict(mu_h=np.asarray(np.nan)), "mu_h must be a finite number >= 0"),
    "mu_h_array": (dict(mu_h=np.ones(2)), "field 'mu_h' has dtype float64 and shape"),
    "mu_h_string": (dict(mu_h=np.asarray("0.1")), "field 'mu_h' has dtype <U3"),
    "classes_short": (dict(classes=np.arange(2)), "is inconsistent: W"),
    "classes_two_dim": (dict(classes=np.arange(3)[None]), "field 'classes' has dtype"),
    "classes_duplicates": (dict(classes=np.array([0, 0, 1])), "classes has repeated labels"),
    "classes_nan": (dict(classes=np.array([0.0, np.nan, 1.0])), "classes contains NaN"),
    "settings_not_json": (dict(settings=np.asarray("{rank: 4")), "unreadable settings"),
    "settings_list": (dict(settings=np.asarray("[1, 2]")), "settings list, not a JSON object"),
    "settings_number": (dict(settings=np.asarray(3)), "field 'settings' has dtype int64"),
}


@pytest.mark.parametrize("bad", BAD_FIELDS)
def test_bad_field_values(bad, tmp_path):
  replacement, match = BAD_FIELDS[bad]
  path = _write(tmp_path / "c.npz", **{**_fields(), **replacement})
  raises_clearly(ValueError, match, conejax.load, path)


# ---------------------------------------------------------------- load_mnist
def _mnist(path, x_train=None, y_train=None, x_test=None, y_test=None, drop=None):
  rng = np.random.default_rng(0)
  fields = dict(x_train=rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
                y_train=np.arange(5, dtype=np.uint8),
                x_test=rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
                y_test=np.arange(3, dtype=np.uint8))
  for key, value in dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test).items():
    if value is not None:
      fields[key] = value
  fields.pop(drop, None)
  return _write(path, **fields)


def test_mnist_uint8_is_divided_by_255(tmp_path):
  path = _mnist(tmp_path / "m.npz")
  with np.load(path) as raw:
    expected = raw["x_train"].reshape(5, -1) / 255
  x, y, _, _ = data.load_mnist(path)
  np.testing.assert_allclose(x, expected, rtol=1e-7)
  assert x.dtype == np.float32 and x.shape == (5, 784) and y.tolist() == list(range(5))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mnist_floats_in_unit_range_are_kept(dtype, tmp_path):
  images = np.random.default_rng(1).random((5, 784)).astype(dtype)
  x, _, _, _ = data.load_mnist(_mnist(tmp_path / "m.npz", x_train=images))
  np.testing.assert_allclose(x, images.astype(np.float32))


BAD_MNIST = {
    "float_above_one": (dict(x_train=np.full((5, 784), 255.0, np.float32)), "floating but not in"),
    "float_negative": (dict(x_train=np.full((5, 784), -0.5, np.float32)), "floating but not in"),
    "float_nan": (dict(x_train=np.full((5, 784), np.nan, np.float32)), "floating but not in"),
    "int_out_of_range": (dict(x_train=np.full((5, 784), 300, np.int16)), "outside 0..255"),
    "bool_images": (dict(x_train=np.ones((5, 784), bool)), "has dtype bool"),
    "train_lengths": (dict(y_train=np.arange(4, dtype=np.uint8)), "one label per image"),
    "test_lengths": (dict(y_test=np.arange(4, dtype=np.uint8)), "one label per image"),
    "labels_2d": (dict(y_train=np.zeros((5, 1), np.uint8)), "one label per image"),
    "float_labels": (dict(y_train=np.arange(5.0)), "labels must be integers"),
    "missing_key": (dict(drop="y_test"), r"fields \['y_test'\] are missing"),
    "one_dim_images": (dict(x_train=np.zeros(5, np.uint8)), "one label per image"),
}


@pytest.mark.parametrize("bad", BAD_MNIST)
def test_bad_mnist_files(bad, tmp_path):
  fields, match = BAD_MNIST[bad]
  raises_clearly(ValueError, match, data.load_mnist, _mnist(tmp_path / "m.npz", **fields))


def test_mnist_missing_and_corrupted(tmp_path):
  raises_clearly(FileNotFoundError, "no MNIST file at", data.load_mnist, tmp_path / "none.npz")
  (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04" + bytes(40))
  raises_clearly(ValueError, "truncated or not an .npz file", data.load_mnist,
                 tmp_path / "bad.npz")


def test_mnist_flat_images_and_empty_split(tmp_path):
  path = _mnist(tmp_path / "m.npz", x_test=np.zeros((0, 784), np.uint8),
                y_test=np.zeros(0, np.uint8))
  _, _, x_test, y_test = data.load_mnist(path)
  assert x_test.shape == (0, 784) and y_test.shape == (0,)
