"""Beta-divergence NMF benchmark: conejax's multiplicative updates against scikit-learn's.

    python experiments/bench_nmf.py [--quick] [--iters 50] [--out results]

Fits U ~ H W^T at rank 64 on a 20000 x 513 spectrogram-sized non-negative matrix (20,000
frames as rows, 513 frequency bins: a 1024-point STFT) under the Kullback-Leibler and the
Itakura-Saito divergences, conejax ``nmf(method="mu")`` against scikit-learn
``NMF(solver="mu", init="custom")``, from the same init and for the same number of
iterations (tol=0, so neither tests convergence), in float32. The two are the same
algorithm (tests/test_nmf_beta.py checks them iterate for iterate in float64); the final
objective of each is reported to show the quality is matched.

The data is synthetic, as no audio ships with the machine: 64 harmonic templates
(a random f0 in 80-400 Hz at 16 kHz, 1/k harmonic decay, Gaussian partials 2 bins wide, a
spectral tilt) activated by sparse gamma codes (80% zeros), times Gamma(5, 1/5)
multiplicative noise (the IS model of a power spectrum), plus 1e-6 of the maximum so that
IS sees no zeros. Seed 0.

conejax is timed on its second call (its first call, compilation included, is
first_call_seconds); scikit-learn runs (after an untimed one-iteration fit) in a
subprocess whose environment drops OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, so OpenBLAS
picks its best kernels; both processes' BLAS libraries are recorded (threadpoolctl). Wall and CPU seconds (``time.process_time``, all threads) are
both reported: the machine may be shared. ``--quick`` is 2000 x 257 at rank 16.

Prints a markdown table, writes results/bench_nmf.json and results/bench_nmf.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time
import warnings

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_nnls import git_state  # noqa: E402
import peers  # noqa: E402

SIZES = {"full": dict(n=20_000, m=513, rank=64), "quick": dict(n=2000, m=257, rank=16)}
LOSSES = ("kullback-leibler", "itakura-saito")


def spectrogram(n, m, n_sources=64, seed=0):
  """(n frames, m bins) float32: harmonic templates, sparse gamma codes, gamma noise."""
  rng = np.random.default_rng(seed)
  hz = np.linspace(0, 8000, m)
  W = np.zeros((m, n_sources))
  for k in range(n_sources):
    f0 = rng.uniform(80, 400)
    for h in range(1, int(8000 // f0) + 1):
      W[:, k] += np.exp(-0.5 * ((hz - h * f0) / (2 * hz[1])) ** 2) / h
    W[:, k] *= np.exp(-hz / rng.uniform(1000, 4000))
  H = rng.gamma(0.5, size=(n, n_sources)) * (rng.random((n, n_sources)) < 0.2)
  U = (H @ W.T) * rng.gamma(5.0, 0.2, size=(n, m))
  return (U + 1e-6 * U.max()).astype(np.float32)


def initial_factors(U, rank, seed=1):
  """scikit-learn's "random" scale, sqrt(mean(U) / rank), on uniform draws: W (m, d), H (n, d)."""
  rng = np.random.default_rng(seed)
  scale = np.sqrt(U.mean() / rank)
  return ((scale * rng.random((U.shape[1], rank))).astype(np.float32),
          (scale * rng.random((U.shape[0], rank))).astype(np.float32))


def divergence(U, H, W, beta_loss):
  """The beta-divergence in float64, scikit-learn's ``_beta_divergence``."""
  from sklearn.decomposition._nmf import _beta_divergence
  return float(_beta_divergence(U.astype(np.float64), np.asarray(H, np.float64),
                                np.asarray(W, np.float64).T, beta_loss))


def peer_main(in_path, out_path):
  """Subprocess side: scikit-learn NMF(solver="mu") per loss; codes, atoms and seconds."""
  from sklearn.decomposition import NMF
  out = {"blas": json.dumps(peers.blas_info())}
  with np.load(in_path, allow_pickle=False) as job:
    U, W0, H0, iters = job["U"], job["W0"], job["H0"], int(job["iters"])
  for loss in LOSSES:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # ConvergenceWarning: max_iter reached, as asked
      warm = NMF(W0.shape[1], solver="mu", beta_loss=loss, init="custom", max_iter=1, tol=0)
      warm.fit_transform(U, W=H0.copy(), H=W0.T.copy())  # untimed: first-call costs
      model = NMF(W0.shape[1], solver="mu", beta_loss=loss, init="custom", max_iter=iters, tol=0)
      wall, cpu = time.perf_counter(), time.process_time()
      H = model.fit_transform(U, W=H0.copy(), H=W0.T.copy())
      out[f"{loss}_wall"] = time.perf_counter() - wall
      out[f"{loss}_cpu"] = time.process_time() - cpu
    out[f"{loss}_H"], out[f"{loss}_W"] = H, model.components_.T
  np.savez(out_path, **out)


def run_peer(U, W0, H0, iters):
  return peers.run(__file__, dict(U=U, W0=W0, H0=H0, iters=iters))


def time_conejax(U, W0, H0, iters, loss):
  """(fit, wall, cpu, first_call_seconds) of conejax.nmf, timed on its second call."""
  import conejax
  fit = lambda: jax.block_until_ready(conejax.nmf(
      U, W0.shape[1], key=jax.random.key(0), method="mu", init=(W0, H0), max_iter=iters,
      tol=0, beta_loss=loss))
  start = time.perf_counter()
  fit()
  first = time.perf_counter() - start
  wall, cpu = time.perf_counter(), time.process_time()
  out = fit()
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return out, wall, cpu, first


def markdown(rows, meta):
  lines = [f"NMF {meta['n']} x {meta['m']}, rank {meta['rank']}, {meta['iters']} MU iterations, "
           f"float32, {meta['cpu']} ({meta['cores']} cores), jax {meta['jax']} "
           f"({meta['backend']}), scikit-learn {meta['sklearn']}.", "",
           "| loss | method | wall s | CPU s | first call s | objective | wall x | CPU x |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    speed = lambda key: f"{r[key]:.2f}" if r.get(key) else ""
    first = f"{r['first_call_seconds']:.1f}" if r.get("first_call_seconds") else ""
    lines.append(f"| {r['loss']} | {r['method']} | {r['wall_seconds']:.2f} | "
                 f"{r['cpu_seconds']:.2f} | {first} | "
                 f"{r['objective']:.6g} | {speed('speedup_wall')} | {speed('speedup_cpu')} |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--iters", type=int, default=50)
  parser.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parents[1] / "results"))
  parser.add_argument("--peer", nargs=2, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.peer:
    return peer_main(*args.peer)
  import sklearn
  size = SIZES["quick" if args.quick else "full"]
  U = spectrogram(size["n"], size["m"])
  W0, H0 = initial_factors(U, size["rank"])
  peer = run_peer(U, W0, H0, args.iters)
  rows = []
  for loss in LOSSES:
    fit, wall, cpu, first = time_conejax(U, W0, H0, args.iters, loss)
    ref = dict(wall=float(peer[f"{loss}_wall"]), cpu=float(peer[f"{loss}_cpu"]))
    rows.append(dict(loss=loss, method="conejax", wall_seconds=wall, cpu_seconds=cpu,
                     first_call_seconds=first, objective=divergence(U, fit.H, fit.W, loss),
                     recorded_objective=float(fit.objective[-1]),
                     speedup_wall=ref["wall"] / wall, speedup_cpu=ref["cpu"] / cpu))
    rows.append(dict(loss=loss, method="scikit-learn", wall_seconds=ref["wall"],
                     cpu_seconds=ref["cpu"], first_call_seconds=None,
                     objective=divergence(U, peer[f"{loss}_H"], peer[f"{loss}_W"], loss)))
  root = pathlib.Path(__file__).resolve().parents[1]
  meta = dict(**size, iters=args.iters, quick=args.quick, jax=jax.__version__,
              backend=jax.default_backend(), sklearn=sklearn.__version__,
              cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
              load_average=os.getloadavg(), commit=git_state(root),
              blas=dict(conejax=peers.blas_info(), peers=json.loads(str(peer["blas"]))),
              data="synthetic harmonic spectrogram, see experiments/bench_nmf.py", seed=0)
  table = markdown(rows, meta)
  print(table)
  out = pathlib.Path(args.out)
  out.mkdir(exist_ok=True)
  name = "bench_nmf_quick" if args.quick else "bench_nmf"
  (out / f"{name}.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
  (out / f"{name}.md").write_text(table)


if __name__ == "__main__":
  main()
