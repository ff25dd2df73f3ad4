"""NNLS benchmark: conejax's solvers against scipy, scikit-learn and optax, with exact gaps.

    python experiments/bench_nnls.py [--quick] [--data ../shared/data/mnist.npz] [--out results]

Solves h*(v) = argmin_{h >= 0} 0.5 ||W h - v||^2 (mu = 0) for every sample v of:
  a. MNIST test digits (x / 255, float32) on one rank-64 NMF dictionary (``conejax.nmf``,
     "mu", 100 iterations, on training digits);
  b. the same digits on ten rank-64 k-means class cones (``conejax.fit_cones``, defaults):
     ``conejax.distance`` exact (default) and with the old approximate APG, against the time
     of the ten products V W_k alone ("x products") and with the accuracy of the argmin;
  c. fewer digits on the 640-atom union of those ten cones;
  d. random problems (m = 150, d = 40, mixed signs) with cond(W^T W) = 1e2 .. 1e8, in
     float32 and float64, every conejax solver at its defaults;
  e. the crossover in atoms: the digits of (c) on the unions of the first 1, 2, 4, 6, 8
     cones (64 .. 512 atoms; 640 is (c)), where "auto" switches from ActiveSet to ADMM.
scipy.optimize.nnls (float64) is the exact reference: the gap of a method is
(f(h) - f(h_scipy)) / max(f(h_scipy), 1e-12 0.5 ||v||^2) per sample and per dictionary, with
f(h) = 0.5 ||W h - v||^2 in float64 from float64 copies of W and v. Peers: a scipy loop,
scikit-learn ``sparse_encode`` (lasso_cd, positive, alpha 1e-10) and ``optax.nnls`` where the
installed optax has it (fixed iterations). conejax and optax calls are timed on their second
call; the first call's extra time is compile_seconds. scipy and scikit-learn run in a
subprocess whose environment drops OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, so that OpenBLAS
picks its best kernels for them; the kernels of both processes are recorded (threadpoolctl).

Prints a markdown table and writes results/bench_nnls.json (one record per problem and
method) and results/bench_nnls.md. ``--quick`` shrinks every size (about 1-2 minutes).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import platform
import subprocess
import time
import types
import warnings

import jax

jax.config.update("jax_enable_x64", True)  # before any array: float64 cases; float32 stays

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import scipy  # noqa: E402
import sklearn  # noqa: E402
from scipy.optimize import nnls as scipy_nnls  # noqa: E402
from sklearn.decomposition import sparse_encode  # noqa: E402
from tqdm import tqdm  # noqa: E402

import conejax  # noqa: E402
from conejax import solvers  # noqa: E402

import peers  # noqa: E402  (experiments/ is the script's own folder)

RANK, NMF_ITERS, SKLEARN_ALPHA, OPTAX_ITERS = 64, 100, 1e-10, 1000
BUDGET_S = 90  # a conejax first call slower than this is not repeated (see warm_timed)
SIZES = {
    "full": dict(n_test=10_000, n_nmf=10_000, n_cones=20_000, n_gap=1000, n_union=500,
                 n_random=200, conds=(1e2, 1e4, 1e6, 1e8)),
    "quick": dict(n_test=500, n_nmf=2000, n_cones=2000, n_gap=100, n_union=20, n_random=50,
                  conds=(1e2, 1e8)),
}
CROSSOVER_CONES = (1, 2, 4, 6, 8)
SOLVERS = {"ActiveSet": solvers.ActiveSet(), "APG": solvers.APG(), "ADMM": solvers.ADMM()}
TARGET_GAP = {"float32": 1e-5, "float64": 1e-10}  # exactness targets of default solvers
OPTAX_NNLS = jax.jit(optax.nnls, static_argnames=("iters",)) if hasattr(optax, "nnls") else None
FIELDS = ("problem", "method", "dtype", "n", "d", "cond", "seconds", "compile_seconds",
          "vs_scipy", "x_products", "mean_gap", "max_gap", "mean_iter", "max_iter",
          "converged_fraction", "accuracy", "target_gap", "notes")


# ----------------------------------------------------------------------------- peers


def scipy_loop(W, V):
  """Exact codes (N, K, d) of every row of V on every (m, d) slice of W (K, m, d)."""
  W, V = W.astype(np.float64), V.astype(np.float64)
  return np.stack([[scipy_nnls(W_k, v)[0] for W_k in W] for v in V])


def sklearn_encode(W, V):
  """Codes (N, 1, d) from sparse_encode: its dictionary is (n_atoms, n_features) = W.T.

  lasso_cd divides alpha by n_features, so it minimises (0.5 ||v - W h||^2 + alpha sum(h)) / m.
  """
  return sparse_encode(V, W[0].T, algorithm="lasso_cd", alpha=SKLEARN_ALPHA,
                       positive=True)[:, None]


PEERS = {"scipy": scipy_loop, "sklearn": sklearn_encode}


def peer_main(in_path, out_path):
  """Subprocess side: runs every job in ``in_path``, writes codes and seconds to ``out_path``."""
  out = {"blas": json.dumps(peers.blas_info())}
  with np.load(in_path, allow_pickle=False) as jobs:
    for i in range(int(jobs["count"])):
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        out[f"h_{i}"] = PEERS[str(jobs[f"method_{i}"])](jobs[f"W_{i}"], jobs[f"V_{i}"])
        out[f"seconds_{i}"] = time.perf_counter() - start
      out[f"unconverged_{i}"] = sum(w.category.__name__ == "ConvergenceWarning" for w in caught)
  np.savez(out_path, **out)


def run_peers(ctx, jobs):
  """Runs [(method, W, V)] in a subprocess with OpenBLAS free to choose its kernels.

  Args:
    ctx: the run's context; its meta records the subprocess's BLAS libraries.
    jobs: (method in PEERS, W (m, d) or (K, m, d), V (N, m)) triples.

  Returns:
    {method: (h (N, K, d), seconds, number of ConvergenceWarnings)}, one entry per job
    (methods are unique within a call).
  """
  arrays = {"count": len(jobs)}
  for i, (method, W, V) in enumerate(jobs):
    W = np.asarray(W)
    arrays |= {f"method_{i}": method, f"W_{i}": W[None] if W.ndim == 2 else W,
               f"V_{i}": np.asarray(V)}
  out = peers.run(__file__, arrays)
  ctx.meta["blas"]["peers"] = json.loads(str(out["blas"]))
  return {method: (out[f"h_{i}"], float(out[f"seconds_{i}"]), int(out[f"unconverged_{i}"]))
          for i, (method, _, _) in enumerate(jobs)}


# ----------------------------------------------------------------------------- measures


def timed(fn):
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start


def warm_timed(fn, budget=None):
  """(output, dict(seconds of the second call, compile_seconds: the first call's extra)).

  A first call over ``budget`` seconds is not repeated: its time (compilation included) is
  reported, compile_seconds is None and ``notes`` says so.
  """
  out, first = timed(fn)
  if budget is not None and first > budget:
    return out, dict(seconds=first, notes=f"first call only (incl. compilation): over {budget} s")
  out, seconds = timed(fn)
  return out, dict(seconds=seconds, compile_seconds=first - seconds)


def objective(W, V, H):
  """0.5 ||v - W_k h||^2 in float64 for W (K, m, d), V (N, m), H (N, K, d): (N, K)."""
  W, V, H = (np.asarray(a, np.float64) for a in (W, V, H))
  return np.stack([0.5 * np.sum((V - H[:, k] @ W_k.T) ** 2, axis=1) for k, W_k in enumerate(W)],
                  axis=1)


def gaps(f, f_ref, V):
  """Mean and max over samples and dictionaries of the relative objective gap."""
  floor = 1e-12 * 0.5 * np.sum(np.asarray(V, np.float64) ** 2, axis=1, keepdims=True)
  gap = (f - f_ref) / np.maximum(f_ref, floor)
  return dict(mean_gap=float(gap.mean()), max_gap=float(gap.max()))


def iter_stats(out):
  n_iter = np.asarray(out.n_iter)
  return dict(mean_iter=float(n_iter.mean()), max_iter=int(n_iter.max()),
              converged_fraction=float(np.mean(out.converged)))


def record(**fields):
  return {f: None for f in FIELDS} | fields


def compare(problem, W, V, peers, cond=None):
  """Records of scipy (the reference), the other peers, every conejax solver and optax.

  Args:
    problem: name of the problem.
    W: (m, d) dictionary; V: (N, m) samples, both of the dtype the methods run in.
    peers: ``run_peers`` output with at least "scipy".
    cond: cond(W^T W) where it is set by construction.

  Returns:
    A list of records.
  """
  W3, dtype = W[None], str(W.dtype)
  h_ref, sec_ref, _ = peers["scipy"]
  f_ref = objective(W3, V, h_ref)
  base = dict(problem=problem, dtype=dtype, n=len(V), d=W.shape[1], cond=cond)

  def row(method, h, seconds, **fields):
    return record(**base, method=method, seconds=seconds, vs_scipy=sec_ref / seconds,
                  **gaps(objective(W3, V, np.reshape(h, h_ref.shape)), f_ref, V), **fields)

  rows = [row("scipy.optimize.nnls loop", h_ref, sec_ref, converged_fraction=1.0)]
  Wj, Vj = jnp.asarray(W), jnp.asarray(V)
  for name, solver in SOLVERS.items():
    out, t = warm_timed(functools.partial(conejax.nnls, Wj, Vj, solver=solver), BUDGET_S)
    rows.append(row(f"conejax {name}", out.h, **t, **iter_stats(out),
                    target_gap=TARGET_GAP[dtype]))
  if OPTAX_NNLS is not None:
    h, t = warm_timed(lambda: OPTAX_NNLS(Wj, Vj.T, iters=OPTAX_ITERS).T)
    rows.append(row(f"optax.nnls ({OPTAX_ITERS} iterations)", h, **t, mean_iter=OPTAX_ITERS,
                    max_iter=OPTAX_ITERS))
  if "sklearn" in peers:
    h, seconds, unconverged = peers["sklearn"]
    rows.append(row("scikit-learn sparse_encode (lasso_cd)", h, seconds,
                    converged_fraction=1 - unconverged / len(V),
                    notes=f"alpha {SKLEARN_ALPHA:g}, positive=True; converged: no "
                          "ConvergenceWarning (lasso_cd's own tol 1e-8, max_iter 1000)"))
  return rows


# ----------------------------------------------------------------------------- cases


def case_dictionary(ctx):
  """(a) Test digits on one rank-64 NMF dictionary fitted on training digits."""
  s = ctx.sizes
  fit, ctx.meta["nmf_fit_seconds"] = timed(lambda: conejax.nmf(
      jnp.asarray(ctx.x_train[:s["n_nmf"]]), RANK, key=jax.random.key(0), method="mu",
      max_iter=NMF_ITERS))
  W, V = np.asarray(fit.W), ctx.x_test[:s["n_test"]]
  peers = run_peers(ctx, [("scipy", W, V), ("sklearn", W, V)])
  return compare(f"a MNIST, NMF dictionary {W.shape[0]}x{W.shape[1]}", W, V, peers)


def case_cones(ctx):
  """(b) Test digits on ten k-means class cones: distances, products, accuracy."""
  s = ctx.sizes
  ctx.cones, ctx.meta["cones_fit_seconds"] = timed(lambda: conejax.fit_cones(
      jnp.asarray(ctx.x_train[:s["n_cones"]]), ctx.y_train[:s["n_cones"]], RANK,
      key=jax.random.key(0)))
  cones, V, labels = ctx.cones, ctx.x_test[:s["n_test"]], ctx.y_test[:s["n_test"]]
  W, Vj, sub = np.asarray(ctx.cones.W), jnp.asarray(V), V[:s["n_gap"]]
  classes = np.asarray(cones.classes)
  products = jax.jit(lambda V, W: jnp.einsum("nm,kmd->nkd", V, W))
  _, t_prod = warm_timed(lambda: products(Vj, cones.W))
  h_ref, sec_ref, _ = run_peers(ctx, [("scipy", W, sub)])["scipy"]
  f_ref = objective(W, sub, h_ref)
  per_sample = lambda seconds, n: (seconds / n) / (t_prod["seconds"] / len(V))
  base = dict(problem=f"b MNIST, {len(W)} class cones 784x{RANK}", dtype=str(W.dtype),
              d=RANK)
  rows = [record(**base, method=f"{len(W)} products V W_k (jitted einsum)", n=len(V),
                 **t_prod, x_products=1.0),
          record(**base, method="scipy.optimize.nnls loop", n=len(sub), seconds=sec_ref,
                 vs_scipy=1.0, x_products=per_sample(sec_ref, len(sub)), mean_gap=0.0,
                 max_gap=0.0, converged_fraction=1.0,
                 accuracy=float(np.mean(classes[f_ref.argmin(1)] == labels[:len(sub)])))]
  for name, options, target in (
      ("default (auto: exact)", {}, TARGET_GAP[str(W.dtype)]),
      ("APG(max_iter=100, tol=1e-3)", dict(solver=solvers.APG(max_iter=100, tol=1e-3)), None),
      # The floor of the exact route: the active set's warm start alone (30 APG steps).
      ("APG, 30 steps (the active set's warm start)",
       dict(solver=solvers.APG(max_iter=solvers.ActiveSet().warm_start, tol=1e-30)), None)):
    D, t = warm_timed(functools.partial(conejax.distance, cones, Vj, **options), BUDGET_S)
    out = jax.tree.map(lambda a: a[:len(sub)], conejax.nnls(cones.W, Vj, **options))
    notes = [t.pop("notes", None), f"gaps, iterations, converged over the first {len(sub)} "
             f"digits x {len(W)} cones"]
    rows.append(record(
        **base, method=f"conejax distance, {name}", n=len(V), **t,
        vs_scipy=(sec_ref / len(sub)) / (t["seconds"] / len(V)),
        x_products=per_sample(t["seconds"], len(V)),
        **gaps(objective(W, sub, out.h), f_ref, sub), **iter_stats(out),
        accuracy=float(np.mean(classes[np.argmin(np.asarray(D), axis=1)] == labels)),
        target_gap=target, notes="; ".join(filter(None, notes))))
  return rows


def case_union(ctx):
  """(c) Test digits on the union of the ten cones, one dictionary of 640 atoms."""
  W = np.asarray(ctx.cones.W).transpose(1, 0, 2).reshape(ctx.cones.W.shape[1], -1)
  V = ctx.x_test[:ctx.sizes["n_union"]]
  peers = run_peers(ctx, [("scipy", W, V), ("sklearn", W, V)])
  return compare(f"c MNIST, union of the cones 784x{W.shape[1]}", W, V, peers)


def case_crossover(ctx, k):
  """(e) The digits of (c) on the union of the first k cones: seconds and gaps against d."""
  W = np.asarray(ctx.cones.W[:k]).transpose(1, 0, 2).reshape(ctx.cones.W.shape[1], -1)
  V = ctx.x_test[:ctx.sizes["n_union"]]
  peers = run_peers(ctx, [("scipy", W, V)])
  return compare(f"e crossover, union of {k} cones 784x{W.shape[1]}", W, V, peers)


def random_problem(cond, n, dtype, m=150, d=40, seed=0):
  """W = U diag(s) Q^T, s geometric with s_max^2 / s_min^2 = cond(W^T W) = cond (any signs).

  V = H W^T + noise with H standard normal: about half the constraints are active, and the
  noise off the range of W keeps f(h*) away from 0. The same seed for every dtype: the
  float32 problem is the float64 one rounded.
  """
  rng = np.random.default_rng(seed)
  U, _ = np.linalg.qr(rng.standard_normal((m, d)))
  Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  W = (U * np.geomspace(1.0, cond**-0.5, d)) @ Q.T
  V = rng.standard_normal((n, d)) @ W.T + 0.1 * rng.standard_normal((n, m))
  return W.astype(dtype), V.astype(dtype)


def case_random(ctx, cond):
  """(d) One conditioning, float32 and float64, every solver at its defaults."""
  problems = [random_problem(cond, ctx.sizes["n_random"], dtype)
              for dtype in (np.float32, np.float64)]
  rows = []
  for W, V in problems:
    peers = run_peers(ctx, [("scipy", W, V)])
    rows += compare("d random 150x40", W, V, peers, cond=cond)
  return rows


# ----------------------------------------------------------------------------- output


def describe_blas(libs):
  return "; ".join(f"{lib['internal_api']} {lib['architecture'] or ''} {lib['num_threads']} "
                   f"threads ({lib['library']})".replace("  ", " ") for lib in libs)


def fmt(value, spec):
  return "" if value is None else format(value, spec)


def markdown(rows, meta):
  lines = [f"NNLS, mu = 0; gaps against scipy.optimize.nnls. Peers (subprocess, "
           f"{'/'.join(peers.PEER_ENV_DROP)} unset): {describe_blas(meta['blas']['peers'])}. "
           f"Main process: {describe_blas(meta['blas']['main'])}. {meta['optax']['note']}",
           "",
           "| problem | method | dtype | n | cond | seconds | compile s | vs scipy | "
           "x products | mean gap | max gap | iter mean / max | converged | accuracy | notes |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    iters = "" if r["mean_iter"] is None else f"{r['mean_iter']:.1f} / {r['max_iter']}"
    lines.append(
        f"| {r['problem']} | {r['method']} | {r['dtype']} | {r['n']} | {fmt(r['cond'], '.0e')} "
        f"| {r['seconds']:.3f} | {fmt(r['compile_seconds'], '.2f')} "
        f"| {fmt(r['vs_scipy'], '.1f')} | {fmt(r['x_products'], '.1f')} "
        f"| {fmt(r['mean_gap'], '.1e')} | {fmt(r['max_gap'], '.1e')} | {iters} "
        f"| {fmt(r['converged_fraction'], '.1%')} | {fmt(r['accuracy'], '.2%')} "
        f"| {r['notes'] or ''} |")
  misses = exactness_misses(rows)
  lines += ["", f"{meta['date']}, {meta['machine']}, {meta['cpus']} CPUs, {meta['devices']}, "
            f"jax {meta['jax']}, conejax {meta['git']}; sizes {meta['sizes']}.", "",
            "Exactness targets (max gap <= 1e-5 float32, <= 1e-10 float64, conejax defaults): "
            + (f"{len(misses)} missed." if misses else "all met.")]
  return "\n".join(lines + [f"- {miss}" for miss in misses])


def exactness_misses(rows):
  return [f"{r['problem']} {r['method']} {r['dtype']} cond {fmt(r['cond'], '.0e')}: max gap "
          f"{r['max_gap']:.2e} > {r['target_gap']:.0e}"
          for r in rows if r["target_gap"] is not None and r["max_gap"] > r["target_gap"]]


def git_state(root):
  """The commit, with "+modified" when conejax/ differs from it (read-only git calls)."""
  git = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True).stdout
  commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
  return commit + ("+modified" if git("status", "--porcelain", "--", "conejax").strip() else "")


def load(path):
  with np.load(path, allow_pickle=False) as data:
    rows = lambda x: (x.reshape(len(x), -1) / 255.0).astype(np.float32)
    return rows(data["x_train"]), data["y_train"], rows(data["x_test"]), data["y_test"]


def main():
  root = pathlib.Path(__file__).resolve().parents[1]
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default=str(root.parent / "shared" / "data" / "mnist.npz"))
  parser.add_argument("--out", default=str(root / "results"))
  parser.add_argument("--quick", action="store_true", help="small sizes, about 1-2 minutes")
  parser.add_argument("--peer", nargs=2, metavar=("JOBS", "OUT"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.peer:
    return peer_main(*args.peer)
  start = time.perf_counter()
  warnings.simplefilter("ignore", conejax.ConvergenceWarning)  # converged_fraction says it
  sizes = SIZES["quick" if args.quick else "full"]
  x_train, y_train, x_test, y_test = load(args.data)
  has_nnls = OPTAX_NNLS is not None
  note = (f"optax {optax.__version__}: optax.nnls (fast projected gradient, Polyak 2015), "
          f"{OPTAX_ITERS} fixed iterations, no stopping test." if has_nnls else
          f"optax {optax.__version__} has no NNLS solver (no optax.nnls; none in optax.contrib "
          "or optax.projections).")
  print(note)
  meta = dict(jax=jax.__version__, conejax=conejax.__version__, numpy=np.__version__,
              scipy=scipy.__version__, sklearn=sklearn.__version__,
              optax=dict(version=optax.__version__, nnls=has_nnls, note=note),
              machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
              devices=str(jax.devices()), date=time.strftime("%Y-%m-%d"), quick=args.quick,
              sizes=sizes, sklearn_alpha=SKLEARN_ALPHA, blas=dict(main=peers.blas_info()),
              git=git_state(root))
  ctx = types.SimpleNamespace(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                              sizes=sizes, meta=meta, cones=None)
  cases = [("a dictionary", case_dictionary), ("b cones", case_cones), ("c union", case_union)]
  cases += [(f"d cond {c:.0e}", functools.partial(case_random, cond=c)) for c in sizes["conds"]]
  cases += [(f"e {k} cones", functools.partial(case_crossover, k=k)) for k in CROSSOVER_CONES]
  rows = []
  for name, case in (bar := tqdm(cases, desc="bench_nnls", unit="case")):
    bar.set_postfix_str(name)
    rows += case(ctx)
  meta["exactness_misses"] = exactness_misses(rows)
  meta["total_seconds"] = time.perf_counter() - start
  table = markdown(rows, meta)
  print(table)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "bench_nnls.json").write_text(json.dumps(dict(meta=meta, records=rows), indent=1))
  (out / "bench_nnls.md").write_text(table + "\n")
  print(f"{meta['total_seconds']:.0f} s; wrote {out / 'bench_nnls.json'} and .md")


if __name__ == "__main__":
  main()
