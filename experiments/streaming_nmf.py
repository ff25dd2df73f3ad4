"""Streaming NMF on MNIST from a memory map: objective and time against batch NMF and
scikit-learn's MiniBatchNMF, and peak memory against the number of rows.

    python experiments/streaming_nmf.py [--data ../shared/data/mnist.npz] [--out results] [--quick]

The 60,000 training images (pixels in [0, 1], float32) are written to a temporary .npy file
and streamed from it in chunks of 1000 rows. Every dictionary is scored the same way: codes by
``conejax.nnls`` (mu = mu_h = 0 here), objective ||U - H W^T||_F^2 over all rows, summed
chunk by chunk. Times include JAX compilation. Peak resident memory (ru_maxrss) is measured in
a fresh subprocess per row count, for streaming (one pass) and for batch NMF (five iterations:
its memory does not grow with iterations). Prints a markdown table and writes
results/streaming_nmf.md and results/streaming_nmf.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings

import jax
import numpy as np

import conejax


MNIST = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist.npz"
TARGET = 0.03  # streaming objective within 3% of batch


def chunks_of(path, rows: int, chunk: int):
  """A function returning a fresh iterator of (chunk, m) float32 blocks of the .npy at path.

  Each block is copied out of its own read-only memory map, which is closed straight after:
  pages of a map count in the resident set while it is open, so one map kept for a whole pass
  would make the process look as large as the file. Past the end of the file, rows wrap
  around (this tiles the data to show N beyond 60,000).
  """
  def blocks():
    for start in range(0, rows, chunk):
      data = np.load(path, mmap_mode="r")
      begin = start % len(data)
      block = np.array(data[begin:begin + min(chunk, rows - start)])
      del data
      yield block
  return blocks


def objective(W, chunks):
  """sum over chunks of ||U_c - H_c W^T||^2 with exact codes; atoms scaled to unit norm first
  (without penalties the scale is free, and NNLS converges faster on unit atoms)."""
  W = np.asarray(W, np.float32)
  norm = np.linalg.norm(W, axis=0)
  W = W / np.where(norm > 0, norm, 1)
  return sum(float(conejax.nmf_objective(U, W, conejax.nnls(W, U).h)) for U in chunks())


def timed(fn):
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start


def child(args):
  """Runs in a subprocess: one streaming pass or a short batch fit; prints peak RSS in MB."""
  import_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  if args.child == "streaming":
    fit = conejax.nmf_minibatch(chunks_of(args.npy, args.rows, args.chunk), args.rank,
                        key=jax.random.key(0), n_epochs=1, progress=False)
  else:
    U = np.empty((args.rows, 784), np.float32)  # filled chunk by chunk: no extra copy
    for start, block in zip(range(0, args.rows, args.chunk),
                            chunks_of(args.npy, args.rows, args.chunk)()):
      U[start:start + len(block)] = block
    fit = conejax.nmf(U, args.rank, key=jax.random.key(0), max_iter=5, tol=0)
  jax.block_until_ready(fit.W)
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(json.dumps(dict(import_mb=import_mb, peak_mb=peak_mb)))


# Linux keeps ru_maxrss across fork and exec: a child spawned from this (large) process would
# report this process's peak. A small launcher process spawns the measured one instead.
_LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def peak_rss(kind, npy, rows, args):
  command = [sys.executable, "-c", _LAUNCHER, sys.executable, __file__, "--child", kind,
             "--npy", str(npy), "--rows", str(rows), "--chunk", str(args.chunk),
             "--rank", str(args.rank)]
  out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def compare(X, npy, args):
  """Objective and time: streaming, batch NMF, scikit-learn MiniBatchNMF."""
  from sklearn.decomposition import MiniBatchNMF
  n = len(X)
  chunks = chunks_of(npy, n, args.chunk)
  key = jax.random.key(0)
  stream, stream_s = timed(lambda: conejax.nmf_minibatch(chunks, args.rank, key=key,
                                                 n_epochs=args.epochs, progress=False))
  batch, batch_s = timed(lambda: conejax.nmf(X, args.rank, key=key, method=args.method,
                                             max_iter=args.batch_iters, tol=0))
  peer = MiniBatchNMF(args.rank, init="nndsvda", batch_size=args.chunk, max_iter=args.epochs,
                      tol=0, max_no_improvement=None, random_state=0)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    _, peer_s = timed(lambda: peer.fit(X))
  reference = objective(batch.W, chunks)
  rows = [dict(method=f"conejax.nmf batch {args.method}", passes=args.batch_iters,
               seconds=batch_s, objective=reference,
               own_codes_objective=float(batch.objective[-1])),
          dict(method="conejax nmf_minibatch (streaming)", passes=args.epochs,
               seconds=stream_s, objective=objective(stream.W, chunks),
               online_estimate=float(stream.objective[-1])),
          dict(method="scikit-learn MiniBatchNMF", passes=args.epochs, seconds=peer_s,
               objective=objective(peer.components_.T, chunks))]
  for row in rows:
    row["gap_vs_batch"] = row["objective"] / reference - 1
    row["rel_error"] = float(np.sqrt(row["objective"] / np.sum(X.astype(np.float64) ** 2)))
  return rows


def markdown(rows, memory, args):
  lines = [f"MNIST training images, rank {args.rank}, chunks of {args.chunk} rows; objective "
           "||U - H W^T||_F^2 with exact NNLS codes for every dictionary; times include JAX "
           "compilation.", "",
           "| method | passes over the data | seconds | objective | relative error | "
           "gap vs batch |", "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['method']} | {r['passes']} | {r['seconds']:.1f} | {r['objective']:.1f} "
                 f"| {r['rel_error']:.4f} | {100 * r['gap_vs_batch']:+.2f}% |")
  stream, peer = rows[1], rows[2]
  met = "met" if stream["gap_vs_batch"] <= TARGET else "missed"
  ratio = stream["objective"] / peer["objective"]
  lines += ["", f"Target: streaming within {TARGET:.0%} of batch: {met}. Streaming vs "
            f"scikit-learn MiniBatchNMF: objective ratio {ratio:.3f}, "
            f"time ratio {stream['seconds'] / peer['seconds']:.2f}.", "",
            "Peak resident memory (MB, ru_maxrss of a fresh process; JAX and conejax imported: "
            f"{memory[0]['streaming']['import_mb']:.0f} MB):", "",
            "| N rows | streaming (one pass) | batch conejax.nmf | N x m float32 |",
            "|---|---|---|---|"]
  for m in memory:
    lines.append(f"| {m['rows']} | {m['streaming']['peak_mb']:.0f} | {m['batch']['peak_mb']:.0f} "
                 f"| {m['rows'] * 784 * 4 / 2**20:.0f} |")
  return "\n".join(lines)


def arguments():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default=str(MNIST), help="mnist.npz (x_train is used)")
  parser.add_argument("--out", default="results", help="folder for the .md and .json")
  parser.add_argument("--quick", action="store_true",
                      help="10,000 rows, 3 passes, 50 batch iterations, smaller memory sweep")
  parser.add_argument("--epochs", type=int, default=5)
  parser.add_argument("--batch-iters", type=int, default=200)
  parser.add_argument("--method", default="hals", choices=("hals", "mu"))
  parser.add_argument("--chunk", type=int, default=1000)
  parser.add_argument("--rank", type=int, default=64)
  parser.add_argument("--child", choices=("streaming", "batch"), help=argparse.SUPPRESS)
  parser.add_argument("--npy", help=argparse.SUPPRESS)
  parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
  return parser.parse_args()


def main():
  args = arguments()
  if args.child:
    return child(args)
  n, sizes = 60000, (10000, 30000, 60000, 120000)
  if args.quick:
    n, sizes, args.epochs, args.batch_iters = 10000, (2000, 5000, 10000), 3, 50
  with np.load(args.data, allow_pickle=False) as data:
    X = (data["x_train"][:n].reshape(n, -1) / 255.0).astype(np.float32)
  with tempfile.TemporaryDirectory() as tmp:
    npy = pathlib.Path(tmp) / "x_train.npy"
    np.save(npy, X)
    rows = compare(X, npy, args)
    memory = [dict(rows=size, **{kind: peak_rss(kind, npy, size, args)
                                 for kind in ("streaming", "batch")}) for size in sizes]
  table = markdown(rows, memory, args)
  print(table)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  meta = dict(jax=jax.__version__, machine=platform.processor() or platform.machine(),
              devices=str(jax.devices()), date=time.strftime("%Y-%m-%d"), quick=args.quick,
              epochs=args.epochs, batch_iters=args.batch_iters, chunk=args.chunk, rank=args.rank)
  name = "streaming_nmf_quick" if args.quick else "streaming_nmf"
  (out / f"{name}.json").write_text(json.dumps(dict(meta=meta, rows=rows, memory=memory),
                                               indent=1))
  (out / f"{name}.md").write_text(table + "\n")


if __name__ == "__main__":
  main()
