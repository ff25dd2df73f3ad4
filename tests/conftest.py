"""Test configuration: float64 available, strict rank promotion (rows vs columns bugs raise),
and XLA's backend at optimisation level 0.

The suite is dominated by compilation (thousands of small programs, each run once or
twice), not by running them: LLVM at level 0 halved the CPU time of tests/test_restore.py
(5 min 22 s -> 2 min 47 s, two runs on the same machine). The programs compute the same
operations; only their machine code is less optimised. Set XLA_FLAGS to override.
"""

import os

_FLAGS = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _FLAGS:
  os.environ["XLA_FLAGS"] = f"{_FLAGS} --xla_backend_optimization_level=0".strip()

import jax  # noqa: E402  (after XLA_FLAGS: read when the backend starts)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


import pytest


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drops JAX's compiled programs after each test module.

  The whole suite compiles thousands of programs in one process; each keeps its machine
  code mapped, and a full run once aborted inside XLA's compiler (SIGABRT) at 42% while every
  file passed on its own. Releasing them per module keeps the process small.
  """
  yield
  jax.clear_caches()
