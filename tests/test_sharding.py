"""Sharded NMF, distances, labels and reconstructions equal the single-device results.

This process already runs JAX on one CPU device, so the 8-device checks run in a fresh
process (tests/sharding_checks.py, with XLA_FLAGS forcing 8 host devices); each check
is reported here as its own test. Validation that needs one device only runs in-process.
"""

import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from conejax import _sharding

SCRIPT = pathlib.Path(__file__).with_name("sharding_checks.py")
CHECKS = ["mesh_and_placement", "errors_on_8_devices", "nmf_mu_1x8", "nmf_hals_2x4",
          "one_all_reduce_per_iteration", "nmf_kl_weights_fixed_1x8",
          "nmf_weighted_hals_fixed_2x4", "nmf_per_class_hals_2x4",
          "nmf_per_class_kl_weights_2x4", "distance_2x4", "distance_kl_cones_2x4", "predict_1x8", "reconstruct_best_1x8",
          "reconstruct_per_sample_2x4"]
KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def report():
  # The suite's quick compiler flags (tests/conftest.py), and eight host devices.
  env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") +
             " --xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                       env=env, timeout=300, check=False)
  results = {name: (status, detail) for status, name, detail in
             re.findall(r"^(PASS|FAIL) (\w+): (.*)$", run.stdout, re.M)}
  return run, results


@pytest.mark.parametrize("name", CHECKS)
def test_sharded_equals_single_device(report, name):
  run, results = report
  if name not in results:
    pytest.fail(f"check {name} did not run (exit code {run.returncode}):\n"
                f"{run.stdout[-2000:]}\n{run.stderr[-3000:]}")
  status, detail = results[name]
  assert status == "PASS", f"{name}: {detail}"


def test_every_check_is_listed(report):
  run, results = report
  assert sorted(results) == sorted(CHECKS)
  assert run.returncode == 0, run.stdout[-2000:]


def _data():
  return np.random.default_rng(0).random((12, 6)).astype(np.float32)


@pytest.mark.parametrize("call, message", [
    (lambda: _sharding.make_mesh(2, devices=jax.devices()[:1]), "needs 2 devices but 1"),
    (lambda: _sharding.make_mesh(n_classes=0), "n_classes must be a positive integer"),
    (lambda: _sharding.shard_samples(_data(), "mesh"), "Build one with conejax's make_mesh"),
    (lambda: _sharding.nmf_sharded(_data(), 2, key=KEY, mesh=_sharding.make_mesh(),
                                   method="anls"), "Use conejax.nmf"),
    (lambda: _sharding.nmf_sharded(_data(), 2, key=KEY, mesh=_sharding.make_mesh(),
                                   init=(np.ones((6, 3)), np.ones((12, 3)))), "shapes W0"),
    (lambda: _sharding.nmf_sharded(-_data(), 2, key=KEY, mesh=_sharding.make_mesh()),
     "negative entries"),
    (lambda: _sharding.nmf_per_class_sharded(_data(), np.arange(12) % 4, 5, key=KEY,
                                             mesh=_sharding.make_mesh()), "fewer than rank"),
    (lambda: _sharding.reconstruct_sharded(np.ones((6, 2)), _data()[0],
                                           _sharding.make_mesh()), "V must have shape (N, k)"),
])
def test_bad_input_names_the_fix(call, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    call()
