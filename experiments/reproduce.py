"""The main job: reproduce the MNIST results of cones as reusable generative models.

    python experiments/reproduce.py                                  # embedded subset
    python experiments/reproduce.py --data ../shared/data/mnist.npz  # full MNIST

Writes results/REPORT.md (each reference claim beside the reproduced number), PNG figures
and results/reproduce.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import matplotlib
import numpy as np
from sklearn.metrics import adjusted_rand_score, roc_auc_score
from tqdm import tqdm

import conejax
from conejax.data import load_mnist

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

import baselines  # noqa: E402  (experiments/ is the script's own folder)
import finetune  # noqa: E402
import inverse_problems  # noqa: E402

# The configuration experiments/sweep_cones.py found best among plain cones.
BEST = dict(init="kmeans", method="mu", max_iter=20, tol=0)
REFERENCE = dict(init="nndsvda", method="mu", max_iter=200, tol=0)


def timed(fn):
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start


def image_grid(images, rows, cols, path, titles=None):
  fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.95))
  for i, ax in enumerate(np.ravel(axes)):
    ax.axis("off")
    if i < len(images):
      ax.imshow(np.asarray(images[i]).reshape(28, 28), cmap="gray_r")
      if titles is not None:
        ax.set_title(titles[i], fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def bases(x_train, key, out, report):
  """A rank-64 cone on 5000 training images of all digits: its atoms and training time."""
  U = x_train[:5000]
  fit, seconds = timed(lambda: conejax.nmf(U, 64, key=key, method="mu", max_iter=200, tol=0))
  _, seconds = timed(lambda: conejax.nmf(U, 64, key=key, method="mu", max_iter=200, tol=0))
  image_grid(np.asarray(fit.W).T, 8, 8, out / "bases.png")
  error = float(np.linalg.norm(U - np.asarray(fit.H) @ np.asarray(fit.W).T) / np.linalg.norm(U))
  report["bases"] = dict(n=len(U), seconds=seconds, rel_error=error)
  return conejax.make_cones(fit.W, 0.0)


def projections(cones_all, cones_class, x_test, y_test, out):
  """Twelve test digits, their projection on the all-digit cone and on their class cone."""
  picks = np.array([np.flatnonzero(y_test == c)[0] for c in range(10)] +
                   [np.flatnonzero(y_test == 8)[1], np.flatnonzero(y_test == 3)[1]])
  x = x_test[picks]
  on_all = np.asarray(conejax.project(cones_all, x))[:, 0]
  own = np.asarray(conejax.project(cones_class, x))
  on_class = own[np.arange(len(picks)), y_test[picks]]
  titles = ["test"] * 12 + ["all-digit cone"] * 12 + ["own-class cone"] * 12
  image_grid(np.concatenate([x, on_all, on_class]), 3, 12, out / "projections.png", titles)


def zero_versus_one(x_train, y_train, x_test, y_test, key, report):
  """Rank-64 cones on (up to) 5000 training images of each of 0 and 1."""
  train = np.concatenate([np.flatnonzero(y_train == c)[:5000] for c in (0, 1)])
  test = np.flatnonzero((y_test == 0) | (y_test == 1))
  rows = {}
  for name, config in (("reference (nndsvda, 200 MU)", REFERENCE),
                       ("k-means init, 20 MU", BEST)):
    cones = conejax.fit_cones(x_train[train], y_train[train], 64, key=key, **config)
    predicted = conejax.predict(cones, x_test[test])
    correct = predicted == y_test[test]
    rows[name] = dict(first_2000=float(np.mean(correct[:2000])), all=float(np.mean(correct)),
                      errors=int(np.sum(~correct)), n_test=len(test),
                      n_train_per_class=len(train) // 2)
  report["zero_vs_one"] = rows


def ten_digits(x_train, y_train, x_test, y_test, key, report, ranks, extra_ranks):
  """Nearest-cone accuracy against rank, next to three baselines trained on the same data.

  Fit times include compilation; prediction is timed on its second call (same shapes).
  """
  rows = []
  for label, config, config_ranks in (
      ("cones, reference (nndsvda, 200 MU)", REFERENCE, ranks),
      ("cones, k-means init, 20 MU", BEST, ranks + extra_ranks)):
    for rank in config_ranks:
      cones, fit_s = timed(lambda: conejax.fit_cones(x_train, y_train, rank, key=key, **config))
      conejax.predict(cones, x_test)  # compile for these shapes
      predicted, predict_s = timed(lambda: conejax.predict(cones, x_test))
      rows.append(dict(model=f"{label}, rank {rank}", accuracy=float(np.mean(predicted == y_test)),
                       fit_seconds=fit_s, predict_seconds=predict_s))
      if rank == 64 and config is BEST:
        best64 = cones
  for label, fit in (("logistic regression (JAX, optax)",
                      lambda: baselines.fit_logistic(x_train, y_train, key=key)),
                     ("MLP, 256 hidden units (JAX, optax)",
                      lambda: baselines.fit_mlp(x_train, y_train, key=key)),
                     ("PCA nearest affine subspace, k = 32",
                      lambda: baselines.fit_pca_subspaces(x_train, y_train, k=32))):
    start = time.perf_counter()
    predict = fit()
    fit_s = time.perf_counter() - start
    predicted, predict_s = timed(lambda: predict(x_test))
    rows.append(dict(model=label, accuracy=float(np.mean(predicted == y_test)),
                     fit_seconds=fit_s, predict_seconds=predict_s))
  report["ten_digits"] = rows
  return best64


def anomaly(x_train, y_train, x_test, y_test, key, report, held_out=0):
  """Cones for nine digits; the distance to the nearest one scores the held-out digit."""
  keep = y_train != held_out
  cones = conejax.fit_cones(x_train[keep], y_train[keep], 64, key=key, **BEST)
  scores = np.asarray(conejax.anomaly_score(cones, x_test))
  auc = roc_auc_score(y_test == held_out, scores)
  report["anomaly"] = dict(held_out=held_out, roc_auc=float(auc))


def clustering(x_test, y_test, key, report, rank=8):
  """k-cones with ten clusters on the test set: adjusted Rand index and purity."""
  (labels, _), seconds = timed(lambda: conejax.kcones(x_test, 10, rank, key=key, n_iter=10,
                                                       max_iter=50, method="mu"))
  purity = sum(np.bincount(y_test[labels == k]).max() for k in np.unique(labels)) / len(y_test)
  report["clustering"] = dict(ari=float(adjusted_rand_score(y_test, labels)),
                              purity=float(purity), rank=rank, seconds=seconds)


WHY = """Why plain NMF cones lag, and what closed the gap. NMF from NNDSVDa or random starts
learns parts (short strokes, see the bases figure); a cone of parts also contains the other
classes' digits, so a better fit (more iterations, HALS, higher rank) covers more of the
other classes and classifies worse: at rank 64, 200 updates reach 93.4% (NNDSVDa) or
94.5% (random), HALS 92.5-92.9%, rank 256 92.6%, and an L1 weight on the codes changes
little or hurts. Starting each class's atoms at its k-means centroids (whole prototypes of
that class) and refining them by only 20 multiplicative updates keeps every atom a
recognisable digit of its class: 96.7% at rank 64, and accuracy now grows with the rank
(97.4% at 128, 97.8% at 256). No fine-tuning, no other class's data is used."""


def write_report(report, out):
  b, z, a, c = report["bases"], report["zero_vs_one"], report["anomaly"], report["clustering"]
  lines = [
      "# Reproduction report", "",
      f"Data: {report['data']}; {report['n_train']} training and {report['n_test']} test "
      f"images; device {report['device']}; total {report['seconds']:.0f} s.", "",
      "## Bases", "",
      f"A rank-64 cone from 200 multiplicative updates on {b['n']} training images took "
      f"{b['seconds']:.2f} s (reference: about 5 s on a laptop); relative error "
      f"{b['rel_error']:.4f}. Atoms: ![bases](bases.png)", "",
      "Projections of test digits on the all-digit cone and on their own class's cone:", "",
      "![projections](projections.png)", "",
      "## Digits 0 vs 1 (rank-64 cones)", "",
      "| cones | train images per class | first 2000 test 0s and 1s | all test 0s and 1s |",
      "|---|---|---|---|"]
  for name, r in z.items():
    lines.append(f"| {name} | {r['n_train_per_class']} | {100 * r['first_2000']:.2f}% | "
                 f"{100 * r['all']:.2f}% ({r['errors']} errors in {r['n_test']}) |")
  lines += ["", "Reference: 99.8% on 2000 test points.", "",
            "## All ten digits", "",
            "| model | test accuracy | fit s | predict s |", "|---|---|---|---|"]
  for r in report["ten_digits"]:
    lines.append(f"| {r['model']} | {100 * r['accuracy']:.2f}% | {r['fit_seconds']:.1f} | "
                 f"{r['predict_seconds']:.2f} |")
  lines += ["", "Reference: comparable to a simple neural network. Reference figures measured on "
            "this machine with a JAX prototype (full MNIST): nearest cone 93.3% (rank 64), "
            "PCA nearest subspace 95.7%, logistic regression 92.7%, 3-NN 97.1%, MLP 98.2%.", "",
            WHY, ""]
  sweep = out / "sweep_cones.md"
  if sweep.exists():
    lines += ["Accuracy against rank, init, method and mu_h (full MNIST, "
              "`experiments/sweep_cones.py`; fit and predict seconds from the machine it ran "
              "on, named in the table's heading):", "", sweep.read_text(), ""]
  lines += [
            "## Anomaly detection", "",
            f"Cones for the nine other digits; the distance to the nearest cone separates the "
            f"held-out digit {a['held_out']} from the rest with ROC AUC {a['roc_auc']:.3f}.", "",
            "## Clustering", "",
            f"k-cones (10 cones of rank {c['rank']}) on the test set: adjusted Rand index "
            f"{c['ari']:.3f}, purity {c['purity']:.3f} ({c['seconds']:.0f} s).", ""]
  inverse = out / "inverse_problems.md"
  if inverse.exists():
    lines += ["## Inverse problems with the same cones", "",
              "`experiments/inverse_problems.py`: 500 test digits, every parameter tuned on "
              "held-out training digits; panels in `inverse_*.png`.", "", inverse.read_text(), ""]
  tuned = out / "finetune.md"
  if tuned.exists():
    lines += ["## Fine-tuned cones", "",
              "`experiments/finetune.py`: discriminative fine-tuning of the ten rank-64 class "
              "cones against the 256-unit MLP trained in the same run on the same images, and "
              "adversarial fine-tuning for the 0 + 1 separation. Curves: "
              "![history](finetune_history.png) ![separation](finetune_separation.png)", "",
              tuned.read_text(), ""]
  (out / "REPORT.md").write_text("\n".join(lines))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default=None, help="full mnist.npz (default: embedded subset)")
  parser.add_argument("--out", default="results")
  parser.add_argument("--ranks", default="16,32,64")
  parser.add_argument("--extra_ranks", default="128,256", help="more ranks, best config only")
  parser.add_argument("--skip_inverse", action="store_true",
                      help="leave out experiments/inverse_problems.py")
  parser.add_argument("--skip_finetune", action="store_true",
                      help="leave out experiments/finetune.py")
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  x_train, y_train, x_test, y_test = load_mnist(args.data)
  key = jax.random.key(0)
  report = dict(data=args.data or "embedded subset", n_train=len(y_train), n_test=len(y_test),
                device=str(jax.devices()[0]))
  steps = tqdm(total=8, desc="reproduce", unit="step")
  cones_all = bases(x_train, key, out, report)
  steps.update()
  zero_versus_one(x_train, y_train, x_test, y_test, key, report)
  steps.update()
  ranks = [int(r) for r in args.ranks.split(",")]
  extra = [int(r) for r in args.extra_ranks.split(",") if r]
  best64 = ten_digits(x_train, y_train, x_test, y_test, key, report, ranks, extra)
  steps.update()
  projections(cones_all, best64, x_test, y_test, out)
  anomaly(x_train, y_train, x_test, y_test, key, report)
  steps.update()
  clustering(x_test, y_test, key, report)
  steps.update()
  if not args.skip_inverse:
    inverse_problems.run(args.data, out)
  steps.update()
  if not args.skip_finetune:
    finetune.run(args.data, out)
  steps.update()
  report["seconds"] = time.perf_counter() - start
  write_report(report, out)
  (out / "reproduce.json").write_text(json.dumps(report, indent=1))
  steps.update()
  steps.close()
  print((out / "REPORT.md").read_text())


if __name__ == "__main__":
  main()
