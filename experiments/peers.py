"""Peers in a subprocess with OpenBLAS free to pick its kernels (the experiments' shared part).

This machine forces OpenBLAS's slower Haswell kernels through OPENBLAS_CORETYPE (and sets
OPENBLAS_L2_SIZE); numpy, scipy and scikit-learn peers get their best configuration by
running in a child process whose environment drops both. The child is the calling script
itself, started as ``script --peer IN OUT``: it reads its job from the ``.npz`` IN (no
pickle) and writes its answers to the ``.npz`` OUT.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

PEER_ENV_DROP = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def run(script, arrays: dict) -> dict:
  """Runs ``python script --peer job.npz out.npz`` on ``arrays`` and returns out's arrays."""
  env = {k: v for k, v in os.environ.items() if k not in PEER_ENV_DROP}
  with tempfile.TemporaryDirectory() as tmp:
    src, dst = pathlib.Path(tmp, "job.npz"), pathlib.Path(tmp, "out.npz")
    np.savez(src, **arrays)
    subprocess.run([sys.executable, str(script), "--peer", str(src), str(dst)], env=env,
                   check=True)
    with np.load(dst, allow_pickle=False) as out:
      return {k: out[k] for k in out.files}


def blas_info() -> list:
  """The BLAS and OpenMP libraries loaded in this process, as threadpoolctl reports them."""
  import threadpoolctl
  return [dict(internal_api=lib.get("internal_api"), architecture=lib.get("architecture"),
               num_threads=lib.get("num_threads"), version=lib.get("version"),
               library=pathlib.Path(lib["filepath"]).name)
          for lib in threadpoolctl.threadpool_info()]
