"""Fine-tuning cones on MNIST: discriminative (ten digits) and adversarial (0 + 1 separation).

Ten digits: rank-64 cones (``fit_cones`` defaults) on the training images minus a held-out
validation split, fine-tuned by ``conejax.finetune`` (cross entropy, Adam with a cosine
schedule; the validation accuracy picks the step). Test accuracy before and after, beside the
256-unit MLP of experiments/baselines.py trained in the same run on the same images.

Separation: the reference protocol of experiments/inverse_problems.py (cones of 0 and 1 from
5000 training images each, 1000 test mixtures v = u_0 + u_1, Wiener mask, median PSNR
averaged over both components), plain cones against adversarially fine-tuned ones
(``objective="adversarial"``), at ranks 64 and 112. Held-out training images of 0 and 1 form
the validation mixtures whose median PSNR picks the step.

    python experiments/finetune.py --data ../shared/data/mnist.npz   # full MNIST
    python experiments/finetune.py --quick                           # embedded subset, minutes

Writes results/finetune.md, finetune.json, finetune_history.png and finetune_separation.png.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import time

import jax
import matplotlib
import numpy as np
import optax

import conejax
from conejax.data import load_mnist

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

import baselines  # noqa: E402  (experiments/ is the script's own folder)

# Steps are counted in epochs so that the embedded subset (1000 images per digit) and the full
# data set (about 6000) get the same number of passes; validation is 1/12 of the training
# images (5000 of the 60000).
# Fine-tuning overfits without augmentation (training loss 0.003, validation flat at 0.07):
# each batch is translated by up to one pixel (conejax.random_shift); the MLP is trained
# both plain and with the same shifts.
CLASSIFY = dict(rank=64, epochs=11, learning_rate=3e-3, temperature=1.0, batch_size=256,
                val_fraction=1 / 12, n_evals=10, max_shift=1)
SEPARATE = dict(ranks=(64, 112), epochs=15, learning_rate=1e-3, tau=0.1, batch_size=256,
                val_fraction=1 / 12, n_evals=12, n_mixtures=1000)


def _steps(n_train, config):
  """(steps, eval_every) for ``epochs`` passes over n_train images, ``n_evals`` evaluations."""
  steps = max(config["epochs"] * n_train // config["batch_size"], 1)
  return steps, max(steps // config["n_evals"], 1)


def psnr(estimate, truth):
  """Per-image PSNR in dB for images in [0, 1] (estimates clipped to [0, 1])."""
  mse = np.mean((np.clip(np.asarray(estimate), 0, 1) - truth) ** 2, axis=-1)
  return 10 * np.log10(1.0 / np.maximum(mse, 1e-12))


def separation_psnr(cones, zeros, ones):
  """Median PSNR of the two components of zeros + ones, averaged over both."""
  parts = np.asarray(conejax.separate(cones, zeros + ones))
  return 0.5 * (np.median(psnr(parts[:, 0], zeros)) + np.median(psnr(parts[:, 1], ones)))


def ten_digits(x_train, y_train, x_test, y_test, key, config):
  """Accuracy of the generative cones, the fine-tuned cones and the MLP; the history."""
  n_val = int(config["val_fraction"] * len(y_train))
  val = np.asarray(jax.random.permutation(key, len(y_train)))[:n_val]
  train = np.setdiff1d(np.arange(len(y_train)), val)
  X, y = x_train[train], y_train[train]
  start = time.perf_counter()
  cones = conejax.fit_cones(X, y, config["rank"], key=key)
  fit_s = time.perf_counter() - start
  steps, eval_every = _steps(len(y), config)
  schedule = optax.cosine_decay_schedule(config["learning_rate"], steps)
  shift = functools.partial(conejax.random_shift, image_shape=(28, 28),
                            max_shift=config["max_shift"])
  tuned = conejax.finetune(cones, X, y, optax.adam(schedule), steps=steps, key=key,
                           temperature=config["temperature"], batch_size=config["batch_size"],
                           validation=(x_train[val], y_train[val]), eval_every=eval_every,
                           augment=shift)
  start = time.perf_counter()
  mlp = baselines.fit_mlp(X, y, key=key)
  mlp_s = time.perf_counter() - start
  start = time.perf_counter()
  mlp_shifted = baselines.fit_mlp(X, y, key=key, augment=shift)
  mlp_shifted_s = time.perf_counter() - start
  rows = [dict(model=f"cones, rank {config['rank']} (fit_cones defaults)",
               accuracy=conejax.score(cones, x_test, y_test), seconds=fit_s),
          dict(model=f"cones, rank {config['rank']}, fine-tuned ({tuned.best_step} Adam steps, "
                     f"shifts up to {config['max_shift']} px)",
               accuracy=conejax.score(tuned.cones, x_test, y_test), seconds=tuned.seconds),
          dict(model="MLP, 256 hidden units (JAX, optax)",
               accuracy=float(np.mean(mlp(x_test) == y_test)), seconds=mlp_s),
          dict(model=f"MLP, 256 hidden units, shifts up to {config['max_shift']} px",
               accuracy=float(np.mean(mlp_shifted(x_test) == y_test)), seconds=mlp_shifted_s)]
  return rows, tuned.history


def separation(x_train, y_train, x_test, y_test, key, config):
  """Plain and adversarial cones of 0 and 1 on the reference separation protocol."""
  rng = np.random.default_rng(0)
  test = [x_test[y_test == c] for c in (0, 1)]
  zeros, ones = (t[rng.integers(0, len(t), config["n_mixtures"])] for t in test)
  index = [np.flatnonzero(y_train == c) for c in (0, 1)]
  n_val = int(config["val_fraction"] * min(len(i) for i in index))
  train = np.concatenate([i[:min(5000, len(i) - n_val)] for i in index])
  val = [x_train[i[-n_val:]] for i in index]  # the last n_val images: never in train
  steps, eval_every = _steps(len(train), config)
  X_val, y_val = np.concatenate(val), np.repeat([0, 1], n_val)
  rows, examples = [], {}
  for rank in config["ranks"]:
    cones = conejax.fit_cones(x_train[train], y_train[train], rank, key=key)
    tuned = conejax.finetune(cones, x_train[train], y_train[train],
                             optax.adam(config["learning_rate"]), steps=steps,
                             key=key, objective="adversarial", tau=config["tau"],
                             batch_size=config["batch_size"], validation=(X_val, y_val),
                             eval_every=eval_every,
                             score=lambda c: separation_psnr(c, *val))
    for name, c in (("plain NMF", cones), ("adversarial", tuned.cones)):
      rows.append(dict(rank=rank, cones=name, median_psnr=float(separation_psnr(c, zeros, ones)),
                       seconds=tuned.seconds if name == "adversarial" else None,
                       best_step=tuned.best_step if name == "adversarial" else None))
      examples[(rank, name)] = np.asarray(conejax.separate(c, zeros[:8] + ones[:8]))
  return rows, examples, (zeros[:8], ones[:8])


def plot_history(history, path):
  fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
  axes[0].plot(history.step[1:], history.train_loss[1:], label="train")
  axes[0].plot(history.step, history.val_loss, label="validation")
  axes[0].set(xlabel="Adam step", ylabel="cross entropy")
  axes[0].legend()
  axes[1].plot(history.step, 100 * history.val_score)
  axes[1].set(xlabel="Adam step", ylabel="validation accuracy, %")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_separation(examples, truth, path):
  rank = max(r for r, _ in examples)
  rows = [("mixture", truth[0] + truth[1]), ("true 0", truth[0]), ("true 1", truth[1])]
  for name in ("plain NMF", "adversarial"):
    rows += [(f"{name}: 0", examples[(rank, name)][:, 0]),
             (f"{name}: 1", examples[(rank, name)][:, 1])]
  fig, axes = plt.subplots(len(rows), 8, figsize=(7, 0.95 * len(rows)))
  for r, (title, images) in enumerate(rows):
    for j in range(8):
      axes[r, j].imshow(np.clip(images[j], 0, 1).reshape(28, 28), cmap="gray", vmin=0, vmax=1)
      axes[r, j].axis("off")
    axes[r, 0].text(-4, 14, title, fontsize=7, ha="right", va="center")
  fig.subplots_adjust(left=0.18, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def markdown(class_rows, sep_rows, n_mixtures):
  lines = ["| ten digits | test accuracy | seconds |", "|---|---|---|"]
  lines += [f"| {r['model']} | {100 * r['accuracy']:.2f}% | {r['seconds']:.0f} |"
            for r in class_rows]
  lines += ["", f"| 0 + 1 separation, {n_mixtures} test mixtures | rank | median PSNR dB | "
            "fine-tuning s (best step) |", "|---|---|---|---|"]
  for r in sep_rows:
    extra = "" if r["seconds"] is None else f"{r['seconds']:.0f} ({r['best_step']})"
    lines.append(f"| {r['cones']} | {r['rank']} | {r['median_psnr']:.2f} | {extra} |")
  return "\n".join(lines)


def run(data, out, quick=False):
  """Both experiments; returns the markdown table (also written to out/finetune.md)."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  x_train, y_train, x_test, y_test = load_mnist(data)
  classify, separate = dict(CLASSIFY), dict(SEPARATE)
  if quick:
    classify.update(rank=16, epochs=2)
    separate.update(ranks=(16,), epochs=3, n_mixtures=200)
  key = jax.random.key(0)
  class_rows, history = ten_digits(x_train, y_train, x_test, y_test, key, classify)
  sep_rows, examples, truth = separation(x_train, y_train, x_test, y_test, key, separate)
  plot_history(history, out / "finetune_history.png")
  plot_separation(examples, truth, out / "finetune_separation.png")
  table = markdown(class_rows, sep_rows, separate["n_mixtures"])
  (out / "finetune.md").write_text(table + "\n")
  (out / "finetune.json").write_text(json.dumps(dict(
      classify=classify, separate=dict(separate, ranks=list(separate["ranks"])),
      ten_digits=class_rows, separation=sep_rows,
      history={k: np.asarray(v).tolist() for k, v in history._asdict().items()}), indent=1))
  return table


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default=None, help="full mnist.npz (default: embedded subset)")
  parser.add_argument("--out", default="results")
  parser.add_argument("--quick", action="store_true", help="small ranks and few steps")
  args = parser.parse_args()
  print(run(args.data, args.out, args.quick))


if __name__ == "__main__":
  main()
