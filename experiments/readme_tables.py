"""Rewrites the generated tables of README.md from the benchmark results (JSON).

    python experiments/readme_tables.py [BLOCK ...] [--readme README.md] [--results results]

Every block NAME is the text between the lines ``<!-- NAME:start -->`` and
``<!-- NAME:end -->`` of the README; it is replaced by the markdown that BLOCKS[NAME]
makes from its JSON file, and nothing else in the README changes. With no BLOCK named,
all of BLOCKS are rewritten. If a block's markers are missing, nothing is written and the
exit status is 1. To add a block: write a function JSON -> markdown and register it.
"""

from __future__ import annotations

import argparse
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


BLOCKS = {"bench_nnls": ("bench_nnls.json", bench_nnls)}  # name -> (JSON file, JSON -> md)


def replace_block(text, name, markdown):
  """``text`` with block ``name`` replaced by ``markdown``, or None if its markers are missing."""
  pattern = re.compile(rf"(^<!-- {name}:start -->\n).*?(^<!-- {name}:end -->$)",
                       re.DOTALL | re.MULTILINE)
  if not pattern.search(text):
    return None
  return pattern.sub(lambda m: m.group(1) + markdown.strip("\n") + "\n" + m.group(2), text,
                     count=1)


def main():
  root = pathlib.Path(__file__).resolve().parents[1]
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("blocks", nargs="*", metavar="BLOCK",
                      help=f"blocks to rewrite (default all): {', '.join(BLOCKS)}")
  parser.add_argument("--readme", default=str(root / "README.md"))
  parser.add_argument("--results", default=str(root / "results"))
  args = parser.parse_args()
  names = args.blocks or list(BLOCKS)
  if unknown := set(names) - set(BLOCKS):
    parser.error(f"unknown blocks {sorted(unknown)}; known: {', '.join(BLOCKS)}")
  readme = pathlib.Path(args.readme)
  text = readme.read_text()
  for name in names:
    file, make = BLOCKS[name]
    path = pathlib.Path(args.results, file)
    if not path.exists():
      print(f"{path} not found (run its benchmark first); nothing written.", file=sys.stderr)
      return 1
    results = json.loads(path.read_text())
    new = replace_block(text, name, make(results))
    if new is None:
      print(f"{readme}: no lines '<!-- {name}:start -->' and '<!-- {name}:end -->'; "
            "nothing written.", file=sys.stderr)
      return 1
    text = new
  readme.write_text(text)
  print(f"rewrote {', '.join(names)} in {readme}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
