"""Test configuration: float64 available, strict rank promotion (rows vs columns bugs raise)."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
