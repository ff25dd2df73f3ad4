"""Rewrites the generated tables of README.md and docs/*.md from the results (JSON).

    python experiments/readme_tables.py [BLOCK ...] [--results results] [--check]

Every block NAME is the text between the lines ``<!-- NAME:start -->`` and
``<!-- NAME:end -->`` of a page (README.md or any docs/*.md); it is replaced by the
markdown that BLOCKS[NAME] makes from its JSON file, and nothing else changes. Each
experiment's own ``markdown`` function writes its table, so the pages show exactly what the
experiment printed. With no BLOCK named, all blocks found are rewritten; a named block that
no page holds, or whose JSON is missing, is an error (exit status 1). ``--check`` writes
nothing and fails if a page is not up to date (CI runs it). To add a block: write a
function JSON -> markdown and register it in BLOCKS.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import re
import sys


def fmt(value, spec):
  return "" if value is None else format(value, spec)


def kernels(libs):
  """The BLAS libraries of a ``threadpoolctl`` record, in short: "openblas SkylakeX x2"."""
  return ", ".join(sorted({f"{lib['internal_api']} {lib['architecture']} x{lib['num_threads']}"
                           for lib in libs if lib.get("architecture")}))


def bench_nnls(results):
  """Two tables from results/bench_nnls.json: MNIST problems, then max gaps by conditioning."""
  meta, records = results["meta"], results["records"]
  mnist = [r for r in records if r["problem"][:2] in ("a ", "b ", "c ")]
  lines = [f"NNLS with mu = 0 (`python experiments/bench_nnls.py`, {meta['date']}, "
           f"{meta['cpus']} CPUs{', quick sizes' if meta['quick'] else ''}); gap = relative "
           f"objective gap to scipy.optimize.nnls. scipy and scikit-learn ran with "
           f"{kernels(meta['blas']['peers'])}. {meta['optax']['note']}", "",
           "| problem | method | n | seconds | vs scipy | x products | max gap | accuracy |",
           "|---|---|---|---|---|---|---|---|"]
  for r in mnist:
    lines.append(f"| {r['problem'][2:]} | {r['method']} | {r['n']} | {r['seconds']:.3f} "
                 f"| {fmt(r['vs_scipy'], '.1f')} | {fmt(r['x_products'], '.0f')} "
                 f"| {fmt(r['max_gap'], '.0e')} | {fmt(r['accuracy'], '.2%')} |")
  random = [r for r in records if r["problem"].startswith("d ") and not r["method"].startswith(
      "scipy")]
  if random:
    conds = sorted({r["cond"] for r in random})
    cell = {(r["method"], r["dtype"], r["cond"]): r["max_gap"] for r in random}
    by_dtype = sorted(random, key=lambda r: r["dtype"])  # stable: solvers in run order
    keys = dict.fromkeys((r["method"], r["dtype"]) for r in by_dtype)
    lines += ["", f"Max gap on {random[0]['problem'][2:]} ({random[0]['n']} samples) against "
              "cond(W^T W):", "",
              "| method | dtype | " + " | ".join(f"{c:.0e}" for c in conds) + " |",
              "|---|---|" + "---|" * len(conds)]
    for method, dtype in keys:
      gaps = " | ".join(fmt(cell.get((method, dtype, c)), ".0e") for c in conds)
      lines.append(f"| {method} | {dtype} | {gaps} |")
  lines += crossover(records)
  return "\n".join(lines)


def crossover(records):
  """Seconds of each conejax solver against the number of atoms (problems e, then c)."""
  rows = [r for r in records if r["problem"][:2] in ("e ", "c ")
          and r["method"].startswith("conejax")]
  if not rows:
    return []
  atoms = sorted({r["d"] for r in rows})
  cell = {(r["method"], r["d"]): r for r in rows}
  methods = list(dict.fromkeys(r["method"] for r in rows))
  lines = ["", f"Seconds (max gap) on {rows[0]['n']} digits against the number of atoms (unions "
           "of the first k class cones; `auto` takes ActiveSet up to 128 atoms, ADMM above):",
           "", "| method | " + " | ".join(str(d) for d in atoms) + " |",
           "|---|" + "---|" * len(atoms)]
  for method in methods:
    cells = [cell.get((method, d)) for d in atoms]
    lines.append(f"| {method} | " + " | ".join(
        "" if r is None else f"{r['seconds']:.3f} ({fmt(r['max_gap'], '.0e')})" for r in cells)
        + " |")
  return lines


def _experiment(name):
  """An experiment module of this folder (imported for its ``markdown`` function)."""
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  return importlib.import_module(name)


def bench_core(results):
  return _experiment("bench_core").markdown(results["rows"])


def inverse_problems(results):
  return _experiment("inverse_problems").markdown(results["rows"], results["separation"])


def finetune(results):
  return _experiment("finetune").markdown(results["ten_digits"], results["separation"],
                                          results["separate"]["n_mixtures"])


def bench_sharding(results):
  meta = results["meta"]
  return _experiment("bench_sharding").markdown(results["rows"], dict(
      n_train=meta["n_train"], n_test=meta["n_test"]))


def streaming_nmf(results):
  args = argparse.Namespace(**results["meta"])
  return _experiment("streaming_nmf").markdown(results["rows"], results["memory"], args)


def sweep_cones(results):
  return _experiment("sweep_cones").markdown(results["rows"], results["meta"])


def microscopy_uncertainty(results):
  return _experiment("microscopy_uncertainty").markdown(results)


def natural_images(results):
  return _experiment("natural_images").markdown(results["rows"], results["cones"],
                                                results["size"])


def natural_images_headline(results):
  return _experiment("natural_images").headline(results["rows"], results["cones"],
                                                results["size"])


def missing_values(results):
  return _experiment("missing_values").markdown(results)


def mnist_full(results):
  """The full-MNIST reproduction (results/reproduce_mnist_full.json): claims, ten digits."""
  b, z, a, c = results["bases"], results["zero_vs_one"], results["anomaly"], results["clustering"]
  ref, best = z["reference (nndsvda, 200 MU)"], z["k-means init, 20 MU"]
  digits = {r["model"]: r for r in results["ten_digits"]}
  acc = lambda model: f"{100 * digits[model]['accuracy']:.2f}%"
  command = results.get("command", "python experiments/reproduce.py --data " + results["data"])
  lines = [f"`{command}`"
           f" ({results['n_train']} training and {results['n_test']} test images, "
           f"{results['device']}, {results['seconds']:.0f} s in all):", "",
           "| claim (reference) | reproduced |", "|---|---|",
           f"| rank-64 cone on 5000 images trains in ~5 s on a laptop | {b['seconds']:.1f} s, 200 "
           f"multiplicative updates, relative error {b['rel_error']:.3f} |",
           f"| digits 0 vs 1: 99.8% on 2000 test points | {100 * ref['first_2000']:.2f}% on the "
           f"first 2000 test 0s and 1s, {100 * ref['all']:.2f}% on all {ref['n_test']} "
           f"({ref['errors']} errors); k-means-initialised cones {100 * best['first_2000']:.2f}% / "
           f"{100 * best['all']:.2f}% |",
           f"| anomaly detection | cones of nine digits flag the held-out {a['held_out']} with "
           f"ROC AUC {a['roc_auc']:.3f} |",
           f"| clustering | k-cones (10 cones of rank 8) on the test set: adjusted Rand index "
           f"{c['ari']:.3f}, purity {c['purity']:.3f} |", "",
           "| model | test accuracy | fit s | predict s |", "|---|---|---|---|"]
  lines += [f"| {r['model']} | {acc(r['model'])} | {r['fit_seconds']:.0f} | "
            f"{r['predict_seconds']:.2f} |" for r in results["ten_digits"]]
  return "\n".join(lines)


def main_job(results):
  """The headline results of the main job (results/reproduce.json)."""
  digits = results["ten_digits"]
  cones = [r for r in digits if r["model"].startswith("cones")]
  best = max(cones, key=lambda r: r["accuracy"])
  peers = [r for r in digits if not r["model"].startswith("cones")]
  u, inv, f = results["uses"], results["inverse"], results["finetune"]
  lines = [f"`{results['command']}` ({results['data']}: {results['n_train']} training and "
           f"{results['n_test']} test images; {results['seconds']:.0f} s wall, "
           f"{results['cpu_seconds']:.0f} s CPU on {results['cpus']} CPUs, {results['date']}):",
           "", "| capability | result |", "|---|---|",
           f"| classification, ten digits | {best['model']}: {100 * best['accuracy']:.2f}%"
           + "".join(f"; {r['model']} {100 * r['accuracy']:.2f}%" for r in peers) + " |"]
  zero = next(iter(results["zero_vs_one"].values()))
  lines.append(f"| classification, 0 vs 1 | {100 * zero['accuracy']:.2f}% ({zero['errors']} errors "
               f"in {zero['n_test']}) |")
  lines.append(f"| anomaly detection (held-out digit {u['anomaly']['held_out']}) | ROC AUC "
               f"{u['anomaly']['roc_auc']:.3f} |")
  lines.append(f"| k-cones clustering | adjusted Rand index {u['clustering']['ari']:.3f}, purity "
               f"{u['clustering']['purity']:.3f} |")
  for task in dict.fromkeys((r["task"], r["level"]) for r in inv["rows"]):
    rows = [r for r in inv["rows"] if (r["task"], r["level"]) == task]
    ours = max((r for r in rows if r["method"].startswith("conejax")), key=lambda r: r["psnr"])
    peers = [r for r in rows if not r["method"].startswith("conejax")]
    peer = "" if not peers else ", {method} {psnr:.2f}".format(
        **max(peers, key=lambda r: r["psnr"]))
    lines.append(f"| {task[0]}, {task[1]} (PSNR dB) | conejax {ours['psnr']:.2f}{peer} |")
  for r in inv["separation"] or []:
    lines.append(f"| source separation {r['pair']} | median PSNR {r['median_psnr']:.2f} dB |")
  if "ten_digits" in f:
    plain, tuned = f["ten_digits"][0]["accuracy"], f["ten_digits"][1]["accuracy"]
    how = "fine-tuning (optax)"
  else:
    plain, tuned = f["accuracy_before"], f["accuracy_after"]
    how = f"fine-tuning the rank-{f['rank']} cones, {f['steps']} Adam steps"
  lines.append(f"| {how} | test accuracy {100 * plain:.2f}% -> {100 * tuned:.2f}% |")
  s = results["restoration"]
  lines.append(f"| restoration of a {s['size']} px image, sigma {s['sigma']} | "
               f"{s['psnr_noisy']:.2f} -> {s['psnr_restored']:.2f} dB |")
  m, t, k = results["scale_out"], results["streaming"], results["sklearn"]
  lines.append(f"| scale-out on {m['devices']} host devices | W within {m['w_rel_diff']:.0e} of "
               f"one device; predictions agree on {100 * m['predictions_agree']:.1f}% |")
  lines.append(f"| streaming NMF | relative error {t['stream_rel_error']:.4f} (batch "
               f"{t['batch_rel_error']:.4f}) |")
  lines.append(f"| scikit-learn: {k['classifier']}; Pipeline {k['pipeline']} | "
               f"{100 * k['accuracy']:.2f}%; {100 * k['pipeline_accuracy']:.2f}% |")
  if "reuse" in results:
    lines.append("| reuse: classification under operators, transfer, calibration | "
                 "`results/quick/reuse_quick.md` |")
  return "\n".join(lines)


def main_job_timing(results):
  lines = ["| section | wall s | CPU s |", "|---|---|---|"]
  lines += [f"| {name} | {w:.1f} | {c:.1f} |" for name, (w, c) in results["timing"].items()]
  lines.append(f"| total | {results['seconds']:.1f} | {results['cpu_seconds']:.1f} |")
  return "\n".join(lines)


def main_job_cache(results):
  """One line on a run of the main job: wall and CPU seconds and the cache it started with."""
  return (f"`{results['command']}` with JAX's compilation cache holding "
          f"{results['cache_entries_at_start']} programs at the start: "
          f"{results['seconds']:.0f} s wall, {results['cpu_seconds']:.0f} s CPU "
          f"({results['date']}).\n\n" + main_job_timing(results))


def headline_bench(results):
  """A few rows of results/bench_core.json: conejax against its peers at matched quality."""
  keep = ("scikit-learn mu", "conejax mu", "scikit-learn cd", "conejax hals",
          "scipy.optimize.nnls, loop", "conejax nnls")
  rows = [r for r in results["rows"] if r["method"] in keep]
  meta = results["meta"]
  lines = [f"`python experiments/bench_core.py` (MNIST, float32, {meta['devices']}, jax "
           f"{meta['jax']}, {meta['date']}); conejax timed after compilation:", "",
           "| problem | method | seconds | rel. error / gap | speed-up |", "|---|---|---|---|---|"]
  for r in rows:
    quality = f"{r['rel_error']:.5f}" if "rel_error" in r else f"{r.get('gap', 0):.1e}"
    lines.append(f"| {r['section'][2:]} | {r['method']} | {r['seconds']:.2f} | {quality} | "
                 f"{r['speedup']:.2f}x |")
  return "\n".join(lines)


def ci_tests(results):
  """The test suite as the latest clean-clone CI run saw it (results/ci_tests.json, written
  by ``.ci/test_summary.py``): cases, outcomes and seconds, all and the fuzz suite."""
  groups = results["groups"]

  def count(g):
    c = groups[g]
    extra = ", ".join(f"{c[k]} {k}" for k in ("failed", "skipped", "xfailed") if c[k])
    return f"{c['cases']} cases ({c['passed']} passed{', ' + extra if extra else ''})"

  wall = results.get("wall_seconds")
  whole = "tests" in groups  # (a run of tests/fuzz alone has no other group)
  return (f"Latest recorded run ({results['source']}, commit {results['commit']}, "
          f"{results['date']}): "
          + (f"the suite {count('all')}{f' in {wall:.0f} s wall on 2 cores' if wall else ''}; "
             if whole else "") +
          f"the fuzz suite `tests/fuzz/` {count('tests/fuzz')}, "
          f"{groups['tests/fuzz']['seconds']:.0f} s of test time (the sum of its cases' own "
          f"times, one core each).")


# name -> (JSON file in results/, JSON -> markdown)
BLOCKS = {"bench_nnls": ("bench_nnls.json", bench_nnls),
          "bench_core": ("bench_core.json", bench_core),
          "headline_bench": ("bench_core.json", headline_bench),
          "inverse_problems": ("inverse_problems.json", inverse_problems),
          "finetune": ("finetune.json", finetune),
          "bench_sharding": ("bench_sharding.json", bench_sharding),
          "streaming_nmf": ("streaming_nmf.json", streaming_nmf),
          "sweep_cones": ("sweep_cones.json", sweep_cones),
          "microscopy_uncertainty": ("microscopy_uncertainty.json", microscopy_uncertainty),
          "missing_values": ("missing_values.json", missing_values),
          "natural_images": ("natural_images.json", natural_images),
          "natural_images_headline": ("natural_images.json", natural_images_headline),
          "mnist_full": ("reproduce_mnist_full.json", mnist_full),
          "main_job": ("reproduce.json", main_job),
          "main_job_timing": ("reproduce.json", main_job_timing),
          "main_job_warm": ("reproduce_warm.json", main_job_cache),
          "ci_tests": ("ci_tests.json", ci_tests)}


def replace_block(text, name, markdown):
  """``text`` with block ``name`` replaced by ``markdown``, or None if its markers are missing."""
  pattern = re.compile(rf"(^<!-- {name}:start -->\n).*?(^<!-- {name}:end -->$)",
                       re.DOTALL | re.MULTILINE)
  if not pattern.search(text):
    return None
  return pattern.sub(lambda m: m.group(1) + markdown.strip("\n") + "\n" + m.group(2), text,
                     count=1)


def pages(root):
  """README.md and every docs/*.md (the pages that may hold generated blocks)."""
  return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def main():
  root = pathlib.Path(__file__).resolve().parents[1]
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("blocks", nargs="*", metavar="BLOCK",
                      help=f"blocks to rewrite (default all): {', '.join(BLOCKS)}")
  parser.add_argument("--results", default=str(root / "results"))
  parser.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 if a page differs from its JSON")
  args = parser.parse_args()
  if unknown := set(args.blocks) - set(BLOCKS):
    parser.error(f"unknown blocks {sorted(unknown)}; known: {', '.join(BLOCKS)}")
  names = args.blocks or list(BLOCKS)
  made, found, stale = {}, set(), []
  for page in pages(root):
    if not page.exists():
      continue
    text = old = page.read_text()
    for name in names:
      if f"<!-- {name}:start -->" not in text:
        continue
      if name not in made:
        file, make = BLOCKS[name]
        path = pathlib.Path(args.results, file)
        if not path.exists():
          print(f"{path} not found (run its experiment first); nothing written.", file=sys.stderr)
          return 1
        made[name] = make(json.loads(path.read_text()))
      new = replace_block(text, name, made[name])
      if new is None:
        print(f"{page}: '<!-- {name}:start -->' without its end line; nothing written.",
              file=sys.stderr)
        return 1
      text = new
      found.add(name)
    if text != old:
      stale.append(page)
      if not args.check:
        page.write_text(text)
  if missing := [n for n in args.blocks if n not in found]:
    print(f"no page holds the blocks {missing}; nothing else to do.", file=sys.stderr)
    return 1
  if args.check:
    if stale:
      print("out of date (run python experiments/readme_tables.py): "
            + ", ".join(str(p.relative_to(root)) for p in stale), file=sys.stderr)
      return 1
    print(f"up to date: {', '.join(sorted(found))}")
    return 0
  print(f"rewrote {', '.join(str(p.relative_to(root)) for p in stale) or 'nothing'} "
        f"(blocks: {', '.join(sorted(found))})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
