"""Which plain cones classify MNIST best? Accuracy against rank, init, method and mu_h.

    python experiments/sweep_cones.py --data ../shared/data/mnist.npz [--out results]

Fits one cone per digit on the training set for every configuration of the grid and scores
nearest-cone classification on the test set, next to per-class PCA nearest (affine)
subspaces. Prints a markdown table and writes results/sweep_cones.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import conejax
from conejax.data import load_mnist


def pca_nearest_subspace(x_train, y_train, x_test, k):
  """Accuracy of the nearest affine k-dimensional PCA subspace per class."""
  residuals = []
  for c in range(10):
    X = jnp.asarray(x_train[y_train == c])
    mean = X.mean(axis=0)
    basis = jnp.linalg.svd(X - mean, full_matrices=False)[2][:k]  # (k, m)
    centred = jnp.asarray(x_test) - mean
    residuals.append(jnp.sum(centred**2, axis=1) - jnp.sum((centred @ basis.T) ** 2, axis=1))
  return np.asarray(jnp.argmin(jnp.stack(residuals, axis=1), axis=1))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default=None, help="full mnist.npz (default: embedded subset)")
  parser.add_argument("--out", default="results")
  parser.add_argument("--ranks", default="16,32,64,128")
  parser.add_argument("--inits", default="nndsvda,random")
  parser.add_argument("--methods", default="mu,hals")
  parser.add_argument("--mu_h", default="0,0.1", help="projection L1 weights to score")
  parser.add_argument("--train_mu_h", default="0", help="L1 weights on the codes in training")
  parser.add_argument("--skip_pca", action="store_true")
  parser.add_argument("--max_iter", type=int, default=200)
  args = parser.parse_args()
  x_train, y_train, x_test, y_test = load_mnist(args.data)
  rows = []
  for k in () if args.skip_pca else (16, 32, 64):
    start = time.perf_counter()
    predicted = pca_nearest_subspace(x_train, y_train, x_test, k)
    rows.append(dict(model=f"PCA nearest affine subspace, k={k}",
                     accuracy=float(np.mean(predicted == y_test)),
                     seconds=time.perf_counter() - start))
  grid = list(itertools.product([int(r) for r in args.ranks.split(",")],
                                args.inits.split(","), args.methods.split(","),
                                [float(m) for m in args.train_mu_h.split(",")]))
  for rank, init, method, train_mu_h in tqdm(grid, desc="cones"):
    start = time.perf_counter()
    cones = conejax.fit_cones(x_train, y_train, rank, key=jax.random.key(0), init=init,
                              method=method, max_iter=args.max_iter, tol=0, mu_h=train_mu_h)
    jax.block_until_ready(cones.W)
    fit_seconds = time.perf_counter() - start
    for mu_h in [float(m) for m in args.mu_h.split(",")]:
      scored = conejax.make_cones(cones.W, mu_h, cones.classes)
      start = time.perf_counter()
      accuracy = conejax.score(scored, x_test, y_test)
      rows.append(dict(model=f"cones rank {rank}, {init}, {method}, train mu_h {train_mu_h}, "
                             f"mu_h {mu_h}", rank=rank, init=init, method=method,
                       train_mu_h=train_mu_h, mu_h=mu_h, accuracy=accuracy,
                       fit_seconds=fit_seconds, seconds=time.perf_counter() - start))
  meta = dict(devices=str(jax.devices()), jax=jax.__version__, n_train=len(y_train),
              n_test=len(y_test), max_iter=args.max_iter)
  table = markdown(rows, meta)
  print(table)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "sweep_cones.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
  (out / "sweep_cones.md").write_text(table + "\n")


def markdown(rows, meta):
  """A table of the rows; the first predict time of a shape includes compilation."""
  lines = [f"| model ({meta['devices']}, {meta['max_iter']} iterations unless stated) | "
           "test accuracy | fit s | predict s |", "|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['model']} | {100 * r['accuracy']:.2f}% | "
                 f"{r.get('fit_seconds', float('nan')):.1f} | {r['seconds']:.2f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
