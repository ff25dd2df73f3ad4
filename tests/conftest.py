"""Test configuration: float64 available, strict rank promotion (rows vs columns bugs raise)."""

import jax

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
