"""Core benchmark: conejax NMF and NNLS against scikit-learn and scipy on MNIST, float32.

    python experiments/bench_core.py [--data ../shared/data/mnist.npz] [--out results]

Prints a markdown table and writes results/bench_core.json. Every conejax entry is timed
on its second call (the first compiles; its time is reported apart). Peers run in the same
process, so the ratios hold even where absolute seconds drift between runs.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import nnls as scipy_nnls
from sklearn.decomposition import NMF, sparse_encode
from tqdm import tqdm

import conejax

RANK, ITERS = 64, 200


def load(path):
  with np.load(path, allow_pickle=False) as data:
    to_rows = lambda x: (x.reshape(len(x), -1) / 255.0).astype(np.float32)
    return to_rows(data["x_train"]), data["y_train"], to_rows(data["x_test"])


def timed(fn):
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start


def warm_timed(fn):
  """(output, seconds of the second call, seconds of the first call incl. compilation)."""
  _, first = timed(fn)
  out, second = timed(fn)
  return out, second, first


def rel_error(U, H, W):
  H, W = np.asarray(H, np.float64), np.asarray(W, np.float64)
  return float(np.linalg.norm(U - H @ W.T) / np.linalg.norm(U))


def sklearn_nmf(U, solver, max_iter=ITERS):
  model = NMF(RANK, init="nndsvda", solver=solver, max_iter=max_iter, tol=0, random_state=0)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    codes, seconds = timed(lambda: model.fit_transform(U))
  return codes, model.components_.T, seconds


def first_crossing(U, history, target):
  """First iteration whose relative error is at most ``target``, or None."""
  errors = np.sqrt(np.maximum(np.asarray(history, np.float64), 0)) / np.linalg.norm(U)
  hits = np.flatnonzero(errors <= target)
  return int(hits[0]) + 1 if len(hits) else None


def bench_nmf(U, key, rows):
  """Section 1: one dictionary on 5000 images."""
  sk = {s: sklearn_nmf(U, s) for s in ("mu", "cd")}
  sk_err = {s: rel_error(U, c, w) for s, (c, w, _) in sk.items()}
  for s, (_, _, sec) in sk.items():
    rows.append(dict(section="1 NMF 5000x784, rank 64", method=f"scikit-learn {s}",
                     iters=ITERS, seconds=sec, rel_error=sk_err[s], speedup=1.0))
  fits = {}
  for method, inner, peer in [("mu", 1, "mu"), ("hals", 1, "cd"), ("anls", None, "cd"),
                              ("mu", 4, "mu"), ("hals", 2, "cd")]:
    run = lambda n: conejax.nmf(U, RANK, key=key, method=method, max_iter=n, tol=0,
                                inner_iter=inner)
    fit, sec, first = warm_timed(lambda: run(ITERS))
    label = f"conejax {method}" + (f" (inner {inner})" if inner and inner > 1 else "")
    fits[label] = (fit, sec)
    rows.append(dict(section="1 NMF 5000x784, rank 64", method=label, iters=ITERS,
                     seconds=sec, compile_seconds=first - sec, rel_error=rel_error(U, fit.H, fit.W),
                     speedup=sk[peer][2] / sec, peer=f"scikit-learn {peer}"))
    crossing = first_crossing(U, fit.objective, sk_err[peer])
    if crossing is not None and crossing < ITERS:
      short, sec_short, _ = warm_timed(lambda: run(crossing))
      rows.append(dict(section="1 NMF 5000x784, rank 64", method=label + " to peer's error",
                       iters=crossing, seconds=sec_short, rel_error=rel_error(U, short.H, short.W),
                       speedup=sk[peer][2] / sec_short, peer=f"scikit-learn {peer}"))
  return fits["conejax mu"]


def bench_per_class(X, y, key, rows):
  """Section 2: ten class dictionaries on all 60,000 training images."""
  classes = np.unique(y)
  section = "2 ten classes, 60000 images"

  def total_error(parts):
    return float(np.sqrt(sum(p for p in parts)) / np.linalg.norm(X))

  for solver in ("mu", "cd"):
    start, parts = time.perf_counter(), []
    for c in classes:
      codes, atoms, _ = sklearn_nmf(X[y == c], solver)
      parts.append(np.sum((X[y == c] - codes @ atoms.T) ** 2))
    rows.append(dict(section=section, method=f"scikit-learn {solver}, loop", iters=ITERS,
                     seconds=time.perf_counter() - start, rel_error=total_error(parts),
                     speedup=1.0))
  sk_mu, sk_cd = rows[-2]["seconds"], rows[-1]["seconds"]
  for method, peer in (("mu", sk_mu), ("hals", sk_cd)):
    run = lambda: conejax.nmf_per_class(X, y, RANK, key=key, method=method, max_iter=ITERS,
                                        tol=0)
    fit, sec, first = warm_timed(run)
    parts = [np.sum((X[y == c] - np.asarray(fit.H)[y == c] @ np.asarray(fit.W[k]).T) ** 2)
             for k, c in enumerate(classes)]
    peer_name = f"scikit-learn {'mu' if method == 'mu' else 'cd'}, loop"
    rows.append(dict(section=section, method=f"conejax {method}, batched", iters=ITERS,
                     seconds=sec, compile_seconds=first - sec, rel_error=total_error(parts),
                     speedup=peer / sec, peer=peer_name))
    keys = jax.random.split(key, len(classes))
    def loop():
      return [conejax.nmf(X[y == c], RANK, key=keys[k], method=method, max_iter=ITERS, tol=0)
              for k, c in enumerate(classes)]
    fits, sec_loop, _ = warm_timed(loop)
    parts = [np.sum((X[y == c] - np.asarray(f.H) @ np.asarray(f.W).T) ** 2)
             for c, f in zip(classes, fits)]
    rows.append(dict(section=section, method=f"conejax {method}, class by class", iters=ITERS,
                     seconds=sec_loop, rel_error=total_error(parts), speedup=peer / sec_loop,
                     peer=peer_name))
    if method == "mu":
      stacked = fit.W
  return stacked


def bench_projection(V, W, stacked, rows):
  """Section 3: project the 10,000 test images onto one (and ten) 784x64 dictionaries."""
  section = "3 NNLS 10000 test images, 784x64"
  W64, V64 = np.asarray(W, np.float64), V.astype(np.float64)
  objective = lambda H: 0.5 * np.sum((np.asarray(H, np.float64) @ W64.T - V64) ** 2, axis=1)
  exact, sec_scipy = timed(lambda: np.stack([scipy_nnls(W64, v)[0] for v in V64]))
  f_exact = objective(exact)
  gap = lambda H: float(np.mean((objective(H) - f_exact) / f_exact))
  rows.append(dict(section=section, method="scipy.optimize.nnls, loop", seconds=sec_scipy,
                   gap=0.0, speedup=1.0))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    codes, sec_sk = timed(lambda: sparse_encode(V, np.asarray(W).T, algorithm="lasso_cd",
                                                alpha=1e-8, positive=True, max_iter=1000))
  rows.append(dict(section=section, method="scikit-learn sparse_encode (lasso_cd, positive)",
                   seconds=sec_sk, gap=gap(codes), speedup=sec_scipy / sec_sk))
  Wj, Vj = jnp.asarray(W), jnp.asarray(V)
  out, sec, first = warm_timed(lambda: conejax.nnls(Wj, Vj))
  rows.append(dict(section=section, method="conejax nnls", seconds=sec, compile_seconds=first - sec,
                   gap=gap(out.h), speedup=sec_scipy / sec, peer="scipy loop",
                   mean_iters=float(np.mean(out.n_iter))))
  _, sec10, _ = warm_timed(lambda: conejax.nnls(stacked, Vj))
  rows.append(dict(section=section, method="conejax nnls, ten dictionaries at once",
                   seconds=sec10, speedup=10 * sec_scipy / sec10, peer="scipy loop x 10",
                   vs_one_dictionary=sec10 / sec))


def bench_machine(U, W, H, rows):
  """Section 4: float32 matrix-product rate, and what one NMF iteration reaches of it."""
  section = "4 machine limit"
  A = jnp.asarray(np.random.default_rng(0).random((2048, 2048), np.float32))
  square = jax.jit(lambda a: a @ a)
  _, sec, _ = warm_timed(lambda: square(A))
  peak = 2 * 2048**3 / sec / 1e9
  Uj, Wj, Hj = jnp.asarray(U), jnp.asarray(W), jnp.asarray(H)
  products = jax.jit(lambda U, W, H: (U @ W, U.T @ H))
  _, sec_products, _ = warm_timed(lambda: products(Uj, Wj, Hj))
  n, m = U.shape
  flops = 4 * n * m * RANK  # the two products with U; everything else is O((n + m) d^2)
  shaped = flops / sec_products / 1e9
  rows.append(dict(section=section, method="float32 matmul 2048^3", gflops=peak))
  rows.append(dict(section=section, method="float32 U W and U^T H (NMF shapes)", gflops=shaped))
  return flops, peak, shaped


def markdown(rows):
  lines = ["| section | method | iters | seconds | rel. error / gap | speed-up vs peer |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    quality = (f"{r['rel_error']:.5f}" if "rel_error" in r else
               f"{r['gap']:.1e}" if "gap" in r else "")
    if "gflops" in r:
      lines.append(f"| {r['section']} | {r['method']} | | | {r['gflops']:.0f} GFLOP/s | |")
      continue
    if "fraction" in r:
      lines.append(f"| {r['section']} | {r['method']} | | {r['seconds']:.4f} | "
                   f"{r['gflops_reached']:.0f} GFLOP/s | {r['fraction']} |")
      continue
    speed = f"{r['speedup']:.2f}x" + (f" vs {r['peer']}" if "peer" in r else "") + (
        f" ({r['vs_one_dictionary']:.1f}x the time of one)" if "vs_one_dictionary" in r else "")
    lines.append(f"| {r['section']} | {r['method']} | {r.get('iters', '')} | "
                 f"{r['seconds']:.2f} | {quality} | {speed} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default=str(pathlib.Path(__file__).resolve().parents[2]
                                            / "shared" / "data" / "mnist.npz"))
  parser.add_argument("--out", default="results")
  args = parser.parse_args()
  X, y, V = load(args.data)
  U, key, rows = X[:5000], jax.random.key(0), []
  sections = tqdm(total=4, desc="bench_core", unit="section")
  fit, sec = bench_nmf(U, key, rows)
  sections.update()
  stacked = bench_per_class(X, y, key, rows)
  sections.update()
  bench_projection(V, fit.W, stacked, rows)
  sections.update()
  flops, peak, shaped = bench_machine(U, fit.W, fit.H, rows)
  per_iter = sec / ITERS
  reached = flops / per_iter / 1e9
  rows.append(dict(section="4 machine limit", method="one conejax mu iteration (with init)",
                   seconds=per_iter, gflops_reached=reached,
                   fraction=f"{reached / peak:.0%} of 2048^3 rate, {reached / shaped:.0%} of "
                            "same-shape rate"))
  sections.update()
  sections.close()
  table = markdown(rows)
  print(table)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  meta = dict(jax=jax.__version__, machine=platform.processor() or platform.machine(),
              devices=str(jax.devices()), date=time.strftime("%Y-%m-%d"))
  (out / "bench_core.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
  (out / "bench_core.md").write_text(table + "\n")


if __name__ == "__main__":
  main()
