"""Sharded equals single-device, on 8 fake CPU devices: run by tests/test_sharding.py.

XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before JAX starts, so this
runs in its own process. Prints one line per check, "PASS name: detail" or "FAIL name:
detail", and exits 1 if any check failed. Float32 throughout; tolerance 1e-5 relative.
"""

import os
import sys
import time
import traceback

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8")

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import conejax  # noqa: E402
from conejax import _sharding, operators  # noqa: E402

jax.config.update("jax_enable_x64", True)  # as tests/conftest.py
jax.config.update("jax_numpy_rank_promotion", "raise")

RTOL = 1e-5
KEY = jax.random.key(0)
RNG = np.random.default_rng(0)
N, M, D = 203, 30, 5  # 203 rows: padded to 208 on 8 devices, to 204 on 4
U = (RNG.random((N, 6)) @ RNG.random((6, M)) + 0.1 * RNG.random((N, M))).astype(np.float32)
Y = RNG.integers(0, 3, N)
MESH_8 = _sharding.make_mesh()
MESH_2x4 = _sharding.make_mesh(4, n_classes=2)
CHECKS = {}


def check(fn):
  CHECKS[fn.__name__.removeprefix("check_")] = fn
  return fn


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), np.finfo(np.float64).tiny))


def same_fit(out, ref, X):
  """Factors within RTOL, equal iteration counts, objectives within their rounding."""
  errors = {"W": rel(out.W, ref.W), "H": rel(out.H, ref.H)}
  assert max(errors.values()) <= RTOL, errors
  assert np.array_equal(out.n_iter, ref.n_iter), (out.n_iter, ref.n_iter)
  # The objective comes from the statistics: its rounding is a few eps times ||U||^2.
  gap = float(np.max(np.abs(np.asarray(out.objective) - np.asarray(ref.objective))))
  scale = np.sum(X.astype(np.float64) ** 2)
  assert gap <= 1e-6 * scale, (gap, scale)
  return f"W {errors['W']:.1e}, H {errors['H']:.1e}, objective gap {gap / scale:.1e} ||U||^2"


def custom_init():
  return RNG.random((M, D)).astype(np.float32), RNG.random((N, D)).astype(np.float32)


@check
def check_mesh_and_placement():
  assert MESH_8.shape == {"classes": 1, "data": 8}, MESH_8.shape
  assert MESH_2x4.shape == {"classes": 2, "data": 4}, MESH_2x4.shape
  X = _sharding.shard_samples(U[:200], MESH_8)
  assert X.sharding.spec == jax.sharding.PartitionSpec("data"), X.sharding
  assert np.array_equal(X, U[:200])
  return "(1, 8) and (2, 4) meshes, rows on 'data'"


@check
def check_errors_on_8_devices():
  expected = [(lambda: _sharding.shard_samples(U, MESH_8), "pad it by 5 rows"),
              (lambda: _sharding.make_mesh(16), "needs 16 devices but 8"),
              (lambda: _sharding.make_mesh(3, n_classes=3), "needs 9 devices")]
  for fn, text in expected:
    try:
      fn()
    except ValueError as error:
      assert text in str(error), str(error)
    else:
      raise AssertionError(f"no ValueError mentioning {text!r}")
  return "indivisible rows, too many devices"


def nmf_check(method, mesh):
  W0, H0 = custom_init()
  options = dict(key=KEY, method=method, init=(W0, H0), max_iter=60, tol=0, mu_h=0.01)
  return same_fit(_sharding.nmf_sharded(U, D, mesh=mesh, **options),
                  conejax.nmf(U, D, **options), U)


CHECKS["nmf_mu_1x8"] = lambda: nmf_check("mu", MESH_8)
CHECKS["nmf_hals_2x4"] = lambda: nmf_check("hals", MESH_2x4)  # replicated over "classes"


@check
def check_one_all_reduce_per_iteration():
  W, H, mask, zero = jnp.ones((M, D)), jnp.ones((208, D)), jnp.ones(208), jnp.zeros(())
  hlo = _sharding._fit_sharded.lower(
      jnp.ones((208, M)), mask, W, H, zero, zero, mesh=MESH_8, per_class=False,
      method="mu", max_iter=3, tol=0.0, inner=1).compile().as_text()
  reduces = [line for line in hlo.splitlines() if " all-reduce(" in line]
  in_loop = [line for line in reduces if "while/body" in line]
  assert len(reduces) == 2 and len(in_loop) == 1, reduces
  return "||U||^2 once, (U^T H, H^T H, sum H) once per iteration"


def weighted_fixed_check(mesh, **loss):
  """Entry weights and fixed atoms (and a loss) through the same core and all-reduces."""
  W0, H0 = custom_init()
  weights = (RNG.random(U.shape) > 0.2).astype(np.float32)
  fixed = RNG.random((M, 2)).astype(np.float32)
  H0 = np.concatenate([RNG.random((N, 2)).astype(np.float32), H0], axis=1)
  options = dict(key=KEY, init=(W0, H0), max_iter=30, tol=0, mu_h=0.01, weights=weights,
                 fixed_atoms=fixed, **loss)
  out = _sharding.nmf_sharded(U, D, mesh=mesh, **options)
  assert np.array_equal(np.asarray(out.W[:, :2]), fixed)
  return same_fit(out, conejax.nmf(U, D, **options), U)


CHECKS["nmf_kl_weights_fixed_1x8"] = lambda: weighted_fixed_check(
    MESH_8, beta_loss="kullback-leibler")
CHECKS["nmf_weighted_hals_fixed_2x4"] = lambda: weighted_fixed_check(MESH_2x4, method="hals")


@check
def check_nmf_per_class_hals_2x4():
  options = dict(key=KEY, method="hals", init="nndsvda", max_iter=40)
  out = _sharding.nmf_per_class_sharded(U, Y, 4, mesh=MESH_2x4, **options)
  ref = conejax.nmf_per_class(U, Y, 4, **options)
  assert np.array_equal(out.classes, ref.classes)
  return same_fit(out, ref, U)


@check
def check_nmf_per_class_kl_weights_2x4():
  weights = (RNG.random(U.shape) > 0.2).astype(np.float32)
  options = dict(key=KEY, init="random", max_iter=15, tol=0, weights=weights,
                 beta_loss="kullback-leibler", fixed_atoms=RNG.random((M, 1)).astype(np.float32))
  out = _sharding.nmf_per_class_sharded(U, Y, 3, mesh=MESH_2x4, **options)
  ref = conejax.nmf_per_class(U, Y, 3, **options)
  assert np.array_equal(out.classes, ref.classes)
  return same_fit(out, ref, U)


def cones():
  W = RNG.random((3, M, D)).astype(np.float32)
  return conejax.make_cones(W / np.linalg.norm(W, axis=1, keepdims=True), 0.01,
                            classes=["a", "b", "c"])


CONES = cones()
X = np.concatenate([RNG.random((N, D)) @ np.asarray(CONES.W[k]).T + 0.05 * RNG.random((N, M))
                    for k in range(3)]).astype(np.float32)[RNG.permutation(3 * N)][:N]


def distance_check(mesh):
  error = rel(_sharding.distance_sharded(CONES, X, mesh), conejax.distance(CONES, X))
  assert error <= RTOL, error
  return f"{error:.1e}"


def predict_check(mesh):
  predicted, reference = _sharding.predict_sharded(CONES, X, mesh), conejax.predict(CONES, X)
  assert np.array_equal(predicted, reference), np.mean(predicted == reference)
  return f"{len(predicted)} labels equal"


CHECKS["distance_2x4"] = lambda: distance_check(MESH_2x4)  # 3 cones padded to 4


@check
def check_distance_kl_cones_2x4():
  """Cones recording beta_loss code under it in the sharded distance too."""
  kl = conejax.make_cones(CONES.W, CONES.mu_h, CONES.classes,
                          dict(beta_loss="kullback-leibler"))
  error = rel(_sharding.distance_sharded(kl, X, MESH_2x4), conejax.distance(kl, X))
  gap = rel(conejax.distance(kl, X), conejax.distance(CONES, X))
  assert error <= RTOL and gap > 100 * RTOL, (error, gap)
  return f"{error:.1e} (Frobenius differs by {gap:.1e})"
CHECKS["predict_1x8"] = lambda: predict_check(MESH_8)


def reconstruct_check(dictionary, A, mesh, **options):
  out = _sharding.reconstruct_sharded(dictionary, X, mesh, A, **options)
  ref = conejax.reconstruct(dictionary, X, A, **options)
  errors = {name: rel(getattr(out, name), getattr(ref, name)) for name in ("u", "misfit")}
  assert max(errors.values()) <= RTOL and np.array_equal(out.cone, ref.cone), errors
  assert np.array_equal(out.converged, ref.converged), (out.converged, ref.converged)
  return f"u {errors['u']:.1e}, misfit {errors['misfit']:.1e}"


MASK = operators.mask(jnp.asarray(RNG.random(M) > 0.3, jnp.float32))
MASKS = jax.vmap(operators.mask)(jnp.asarray(RNG.random((N, M)) > 0.3, jnp.float32))
CHECKS["reconstruct_best_1x8"] = lambda: reconstruct_check(CONES, MASK, MESH_8, select="best")
CHECKS["reconstruct_per_sample_2x4"] = lambda: reconstruct_check(
    CONES.W[0], MASKS, MESH_2x4, per_sample_operator=True)


def main():
  failed = 0
  for name, fn in CHECKS.items():
    start, cpu = time.perf_counter(), time.process_time()
    try:
      detail = fn()
      print(f"PASS {name}: {detail} ({time.perf_counter() - start:.1f} s, "
            f"{time.process_time() - cpu:.1f} s CPU)", flush=True)
    except Exception:  # noqa: BLE001  (every failure is reported, then the next check runs)
      failed += 1
      detail = traceback.format_exc().strip().splitlines()
      print(f"FAIL {name}: {' | '.join(detail[-3:])}", flush=True)
  print(f"{jax.device_count()} devices, {len(CHECKS) - failed}/{len(CHECKS)} checks passed")
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  main()
