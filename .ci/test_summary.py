"""Summarises a pytest JUnit XML report as JSON: cases and seconds, all and per folder.

    python .ci/test_summary.py .ci-report/junit.xml > .ci-report/tests.json

CI runs it after the test suite; the JSON of a clean-clone CI run, copied to
``results/ci_tests.json``, feeds the README's reliability line (``readme_tables.py``), so
the case count there is the one CI saw. Seconds are the sum of the cases' own times (setup,
call and teardown as pytest reports them, one core each), not the wall time of a parallel
run; ``wall_seconds`` is the suite's wall time when given with ``--wall``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import xml.etree.ElementTree as ET


def outcome(case) -> str:
  for tag in ("failure", "error"):
    if case.find(tag) is not None:
      return "failed"
  skipped = case.find("skipped")
  if skipped is not None:
    return "xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"
  return "passed"


def summarise(path: str) -> dict:
  counts: dict[str, dict] = {}
  for case in ET.parse(path).getroot().iter("testcase"):
    module = case.get("classname", "")
    group = "tests/fuzz" if module.startswith(("tests.fuzz.", "fuzz.")) else "tests"
    for name in ("all", group):
      c = counts.setdefault(name, {"cases": 0, "seconds": 0.0, "passed": 0, "failed": 0,
                                   "skipped": 0, "xfailed": 0})
      c["cases"] += 1
      c["seconds"] += float(case.get("time", 0.0))
      c[outcome(case)] += 1
  for c in counts.values():
    c["seconds"] = round(c["seconds"], 1)
  return counts


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("junit")
  parser.add_argument("--wall", type=float, default=None, help="the suite's wall seconds")
  parser.add_argument("--source", default="a local run",
                      help="where the report comes from, as the README names it")
  args = parser.parse_args(argv)
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
  report = {"source": args.source, "commit": commit, "date": datetime.date.today().isoformat(),
            "wall_seconds": args.wall, "groups": summarise(args.junit)}
  json.dump(report, sys.stdout, indent=1)
  sys.stdout.write("\n")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
