"""Test configuration: float64 available, strict rank promotion (rows vs columns bugs raise),
and quick XLA compilation.

The suite is dominated by compilation (thousands of small programs, each run once or
twice), not by running them, so it asks XLA:CPU for quick, plain code:

- ``--xla_backend_optimization_level=0``: LLVM at level 0 halved the CPU time of
  tests/test_restore.py (5 min 22 s -> 2 min 47 s, two runs on the same machine);
- ``--xla_cpu_use_fusion_emitters=false``: the legacy loop emitters instead of the MLIR
  fusion emitters, which compile a program in about half the time (six test modules:
  142 s -> 96 s wall; the whole suite 2x quicker).

The programs compute the same operations; only their machine code differs, and with it
the rounding of some products by batch size, so the bitwise batch invariance of the solvers
is tested at XLA's default flags in a fresh process (tests/test_solvers.py). Set XLA_FLAGS
to override either flag.
"""

import os

_FLAGS = os.environ.get("XLA_FLAGS", "")
for _flag, _value in (("xla_backend_optimization_level", "0"),
                      ("xla_cpu_use_fusion_emitters", "false")):
  if _flag not in _FLAGS:
    _FLAGS = f"{_FLAGS} --{_flag}={_value}".strip()
os.environ["XLA_FLAGS"] = _FLAGS

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
