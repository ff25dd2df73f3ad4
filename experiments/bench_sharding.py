"""Sharded NMF and projection against the number of host CPU devices, on MNIST.

    python experiments/bench_sharding.py [--quick] [--gspmd] [--devices 1 2 4 8]
                                         [--data ../shared/data/mnist.npz] [--out results]

Each device count runs in its own process, with XLA_FLAGS=--xla_force_host_platform_
device_count=n set before JAX starts. Measured there: seconds per NMF iteration
(``nmf_sharded``, 60,000 x 784 training images, rank 64, "mu" and "hals", from the same
random init, tol 0), and seconds to project 10,000 test images on ten rank-64 cones and
classify them (``predict_sharded``, shard_map; with ``--gspmd`` also ``conejax.predict`` on
row-sharded input, partitioned by GSPMD); every time is a second call (the first
compiles). The 1-device process also times the unsharded ``conejax.nmf``. Prints a markdown
table and writes results/bench_sharding.md and .json (``--quick``: 6,000 training and 2,000
test images, written to bench_sharding_quick.*). The cones are fitted once, in a process
of their own, on the first 5,000 training images.

Host devices are not GPUs: the n devices here are threads on this machine's physical
cores (os.cpu_count() is recorded), so the table shows the cost of splitting the work and
of the all-reduce, not a speed-up from added hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

import conejax

RANK, NMF_ITERS, N_CONES_TRAIN = 64, 5, 5000


def load(path, quick):
  with np.load(path, allow_pickle=False) as data:
    to_rows = lambda x: (x.reshape(len(x), -1) / 255.0).astype(np.float32)
    n_train, n_test = (6000, 2000) if quick else (60000, 10000)
    return (to_rows(data["x_train"][:n_train]), data["y_train"][:n_train],
            to_rows(data["x_test"][:n_test]), data["y_test"][:n_test])


def timed(fn):
  """Seconds of the second call of fn (the first compiles), and its output."""
  jax.block_until_ready(fn())
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start


def fit_cones(args):
  """One process on one device: ten rank-64 cones from the first training images."""
  X, y, _, _ = load(args.data, args.quick)
  n = min(N_CONES_TRAIN, len(X))
  conejax.save(args.cones, conejax.fit_cones(X[:n], y[:n], RANK, key=jax.random.key(0)))


def measure(args):
  """One process, ``args.child`` host devices: the timings of one row of the table."""
  assert jax.device_count() == args.child, jax.devices()
  X, _, T, t_labels = load(args.data, args.quick)
  cones = conejax.load(args.cones)
  mesh = conejax.make_mesh()
  rng = np.random.default_rng(0)
  scale = np.sqrt(X.mean() / RANK)
  init = ((scale * rng.random((X.shape[1], RANK))).astype(np.float32),
          (scale * rng.random((X.shape[0], RANK))).astype(np.float32))
  row = dict(devices=args.child)
  for method in ("mu", "hals"):
    options = dict(key=jax.random.key(0), method=method, init=init, max_iter=NMF_ITERS, tol=0)
    _, seconds = timed(lambda: conejax.nmf_sharded(X, RANK, mesh=mesh, **options).W)
    row[f"nmf_{method}"] = seconds / NMF_ITERS
    if args.child == 1:
      _, seconds = timed(lambda: conejax.nmf(X, RANK, **options).W)
      row[f"unsharded_nmf_{method}"] = seconds / NMF_ITERS
  labels, row["predict"] = timed(lambda: conejax.predict_sharded(cones, T, mesh))
  row["accuracy"] = float(np.mean(labels == t_labels))
  if args.gspmd:  # the unchanged function on row-sharded input
    T_rows = conejax.shard_samples(T, mesh)
    gspmd, row["predict_gspmd"] = timed(lambda: conejax.predict(cones, T_rows))
    row["gspmd_labels_equal"] = bool(np.array_equal(gspmd, labels))
  print(json.dumps(row))


def run_child(args, flag, devices=1):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  command = [sys.executable, __file__, flag, str(devices), "--data", str(args.data),
             "--cones", str(args.cones)] + (["--quick"] if args.quick else []) + (
                 ["--gspmd"] if args.gspmd else [])
  out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  if out.returncode:
    raise SystemExit(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}")
  return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def markdown(rows, sizes):
  base, gspmd = rows[0], "predict_gspmd" in rows[0]
  lines = [f"NMF: {sizes['n_train']} x 784, rank {RANK}, seconds per iteration; projection on "
           f"10 rank-{RANK} cones and classification of {sizes['n_test']} test images, "
           "seconds. Speed-up against 1 device in brackets.", "",
           "| host devices | NMF mu s/iter | NMF hals s/iter | predict_sharded s | "
           + ("predict on sharded rows (GSPMD) s | " if gspmd else "") + "accuracy |",
           "|---|---|---|---|" + ("---|" if gspmd else "") + "---|"]
  cell = lambda r, key: f"{r[key]:.3f} ({base[key] / r[key]:.2f}x) | "
  for r in rows:
    lines.append(f"| {r['devices']} | " + cell(r, "nmf_mu") + cell(r, "nmf_hals")
                 + cell(r, "predict") + (cell(r, "predict_gspmd") if gspmd else "")
                 + f"{r['accuracy']:.4f}"
                 + ("" if r.get("gspmd_labels_equal", True) else " (GSPMD labels differ)") + " |")
  lines.append(f"| conejax.nmf, unsharded | {base['unsharded_nmf_mu']:.3f} | "
               f"{base['unsharded_nmf_hals']:.3f} | | " + ("| " if gspmd else "") + "|")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  here = pathlib.Path(__file__).resolve().parents[1]
  parser.add_argument("--data", type=pathlib.Path, default=here.parent / "shared" / "data" /
                      "mnist.npz")
  parser.add_argument("--out", type=pathlib.Path, default=here / "results")
  parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--gspmd", action="store_true")
  parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--fit-cones", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--cones", type=pathlib.Path, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.fit_cones:
    return fit_cones(args)
  if args.child:
    return measure(args)
  start, load_before = time.perf_counter(), os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    args.cones = pathlib.Path(tmp) / "cones.npz"
    run_child(args, "--fit-cones")
    rows = []
    for n in sorted(args.devices):
      rows.append(json.loads(run_child(args, "--child", n)))
      print(f"{n} devices: {rows[-1]}", flush=True)
  sizes = dict(n_train=6000 if args.quick else 60000, n_test=2000 if args.quick else 10000)
  table = markdown(rows, sizes)
  print(table)
  meta = dict(platform=platform.platform(), processor=platform.processor(),
              cpu_count=os.cpu_count(), python=platform.python_version(),
              jax=jax.__version__,
              quick=args.quick, rank=RANK, nmf_iters=NMF_ITERS,
              cones_trained_on=min(N_CONES_TRAIN, sizes["n_train"]), **sizes,
              load_average_before=load_before, load_average_after=os.getloadavg(),
              total_seconds=time.perf_counter() - start)
  args.out.mkdir(parents=True, exist_ok=True)
  suffix = "_quick" if args.quick else ""
  (args.out / f"bench_sharding{suffix}.json").write_text(json.dumps(dict(meta=meta, rows=rows),
                                                                     indent=2))
  (args.out / f"bench_sharding{suffix}.md").write_text(
      "# Sharding on host CPU devices\n\n" + table + "\n\nAll host devices share "
      f"{os.cpu_count()} cores (1-minute load average {load_before[0]:.1f} at the start, "
      f"{meta['load_average_after'][0]:.1f} at the end): this shows the overhead of sharding, "
      "not GPU scaling.\n")


if __name__ == "__main__":
  main()
