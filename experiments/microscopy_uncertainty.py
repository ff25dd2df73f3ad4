"""Super-resolution of scikit-image's microscopy images with a per-pixel uncertainty map.

    python experiments/microscopy_uncertainty.py            # results/microscopy_uncertainty.*
    python experiments/microscopy_uncertainty.py --tables   # re-render the JSON's table

Protocol (issue 17): the bundled ``cell``, ``ihc`` (``immunohistochemistry``),
``microaneurysms`` and ``retina``, grayscale in [0, 1]. Each image's central region of at
most ``--size`` rows by 2 ``--size`` columns is split into a left half and a right half;
one set of patch cones is fitted on the four left halves and every right half (cropped to a
multiple of 4 pixels) is the test image, unseen by the fit. Each test image is
average-pooled 2x and 4x (``conejax.operators.downsample``, noiseless) and restored by
``conejax.restore(..., uncertainty=True)`` (output "prior": the posterior mean of the last
prior step and its std map); ``conejax (data step)`` is the plain restore with
``output="data"`` for reference, and bicubic is ``skimage.transform.resize(order=3)`` of the
low-resolution image. How well the std ranks the error: the mean absolute error of the 10%
of pixels with the largest std over that of the 50% with the smallest (``ratio``), the
Spearman correlation over ``--block`` x ``--block`` blocks of the total predicted variance
(sum of std^2) with the true squared error (``block_spearman``), the same per pixel (std
against |error|), and the calibration of the scale: RMS std over RMSE (1 for a map of the
right size). Seconds are wall time per restore, including its compilation where the image
shape and factor are new (``compiled``). Writes results/microscopy_uncertainty.json, a
markdown table (.md) and one figure per factor (ground truth, low resolution, restored,
std, |error|).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import platform
import sys
import time

import jax
import matplotlib
import numpy as np
from PIL import Image
from scipy.stats import spearmanr
from skimage import transform
from tqdm import tqdm

import conejax
from conejax import operators

from natural_images import load_gray  # noqa: E402  (experiments/ is the script's own folder)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGES = {"cell": "cell", "ihc": "immunohistochemistry", "microaneurysms": "microaneurysms",
          "retina": "retina"}


def halves(x: np.ndarray, size: int):
  """The central region (at most size x 2 size) split into left (training) and right
  (test) halves; the test half cropped to a multiple of 4 pixels per side."""
  h, w = min(x.shape[0], size), min(x.shape[1], 2 * size)
  top, left = (x.shape[0] - h) // 2, (x.shape[1] - w) // 2
  region = x[top:top + h, left:left + w]
  train, test = region[:, :w // 2], region[:, w // 2:]
  return train, test[:test.shape[0] // 4 * 4, :test.shape[1] // 4 * 4]


def psnr(estimate, truth):
  return float(10 * np.log10(1 / np.mean((np.clip(estimate, 0, 1) - truth) ** 2)))


def ranking(image, std, truth, block):
  """How the std map ranks the error (see the module docstring)."""
  error = np.abs(image - truth)
  order = np.argsort(std.reshape(-1), kind="stable")
  flat, n = error.reshape(-1), error.size
  top, bottom = flat[order[-n // 10:]].mean(), flat[order[:n // 2]].mean()
  h, w = (s // block * block for s in truth.shape)
  blocks = lambda a: a[:h, :w].reshape(h // block, block, w // block, block).sum((1, 3))
  return dict(mae_top10_std=float(top), mae_bottom50_std=float(bottom),
              ratio=float(top / max(bottom, 1e-30)),
              block_spearman=float(spearmanr(blocks(std**2).ravel(),
                                             blocks(error**2).ravel()).statistic),
              pixel_spearman=float(spearmanr(std.ravel(), error.ravel()).statistic),
              std_over_rmse=float(np.sqrt(np.mean(std**2)) / np.sqrt(np.mean(error**2))))


def timed(fn):
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start


def super_resolve(cones, truth, factor, settings, block):
  A = operators.downsample(factor, truth.shape)
  v = np.asarray(A.mv(truth.reshape(-1).astype(np.float32)))
  low = v.reshape(truth.shape[0] // factor, truth.shape[1] // factor)
  run = lambda **more: conejax.restore(cones, v, A, image_shape=truth.shape, sigma=0.0,
                                       data_range=1.0, **settings, **more)
  (image, std), seconds = timed(lambda: run(uncertainty=True))
  image, std = np.asarray(image, np.float64), np.asarray(std, np.float64)
  data, data_seconds = timed(lambda: run(output="data"))
  bicubic = transform.resize(low, truth.shape, order=3)
  row = dict(factor=factor, shape=list(truth.shape), psnr=psnr(image, truth),
             psnr_data_step=psnr(np.asarray(data, np.float64), truth),
             psnr_bicubic=psnr(bicubic, truth), seconds=seconds, seconds_data_step=data_seconds,
             **ranking(image, std, truth, block))
  return row, dict(truth=truth, low=low, image=image, std=std)


def figure(path, factor, panels):
  columns = ["ground truth", f"low resolution (1/{factor})", "restored", "std", "|error|"]
  fig, axes = plt.subplots(len(panels), 5, figsize=(12, 2.5 * len(panels)), squeeze=False)
  for i, (name, p) in enumerate(panels.items()):
    error = np.abs(p["image"] - p["truth"])
    top = max(float(np.quantile(p["std"], 0.99)), float(np.quantile(error, 0.99)), 1e-6)
    shown = [(p["truth"], "gray", 1), (p["low"], "gray", 1), (np.clip(p["image"], 0, 1),
             "gray", 1), (p["std"], "magma", top), (error, "magma", top)]
    for j, (image, cmap, vmax) in enumerate(shown):
      axes[i, j].imshow(image, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
      axes[i, j].set_xticks([])
      axes[i, j].set_yticks([])
      if i == 0:
        axes[i, j].set_title(columns[j], fontsize=9)
    axes[i, 0].set_ylabel(name, fontsize=9)
  fig.suptitle(f"{factor}x super-resolution: std and |error| on the same scale (0 to the "
               "99th percentile of either)", fontsize=10)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, dpi=70)
  plt.close(fig)
  # 256 colours: the |error| maps are noise-like and make a full-colour PNG large (~0.8 MB).
  Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)


def markdown(result):
  meta = result["meta"]
  lines = [f"`{meta['command']}` ({meta['seconds']:.0f} s wall on {meta['cpus']} CPUs, "
           f"{meta['date']}; cones: {meta['cones']}, fitted in {meta['fit_seconds']:.0f} s on "
           f"the left halves; restore: {meta['settings']}):", "",
           "| image | test pixels | factor | PSNR restored | PSNR data step | PSNR bicubic | "
           "MAE top-10% std | MAE bottom-50% std | ratio | block Spearman | pixel Spearman | "
           "RMS std / RMSE | seconds |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in result["rows"]:
    lines.append(f"| {r['image']} | {r['shape'][0]}x{r['shape'][1]} | {r['factor']}x | "
                 f"{r['psnr']:.2f} | {r['psnr_data_step']:.2f} | {r['psnr_bicubic']:.2f} | "
                 f"{r['mae_top10_std']:.4f} | {r['mae_bottom50_std']:.4f} | {r['ratio']:.1f} | "
                 f"{r['block_spearman']:.2f} | {r['pixel_spearman']:.2f} | "
                 f"{r['std_over_rmse']:.2f} | {r['seconds']:.1f}{'*' if r['compiled'] else ''} |")
  for factor in sorted({r["factor"] for r in result["rows"]}):
    rows = [r for r in result["rows"] if r["factor"] == factor]
    mean = lambda key: np.mean([r[key] for r in rows])
    lines.append(f"| mean | | {factor}x | {mean('psnr'):.2f} | {mean('psnr_data_step'):.2f} | "
                 f"{mean('psnr_bicubic'):.2f} | | | {mean('ratio'):.1f} | "
                 f"{mean('block_spearman'):.2f} | {mean('pixel_spearman'):.2f} | "
                 f"{mean('std_over_rmse'):.2f} | |")
  lines += ["", "(* includes compiling restore for a new image shape.)"]
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", default=",".join(IMAGES), help=f"from {', '.join(IMAGES)}")
  parser.add_argument("--size", type=int, default=256, help="rows of the central region; "
                      "each half is at most size x size")
  parser.add_argument("--factors", default="2,4")
  parser.add_argument("--patch", type=int, default=6)
  parser.add_argument("--rank", type=int, default=16)
  parser.add_argument("--n_cones", type=int, default=4)
  parser.add_argument("--n_train", type=int, default=8000)
  parser.add_argument("--n_iter", type=int, default=8)
  parser.add_argument("--stride", type=int, default=2)
  parser.add_argument("--block", type=int, default=16, help="side of the Spearman blocks")
  parser.add_argument("--json", default=str(ROOT / "results" / "microscopy_uncertainty.json"))
  parser.add_argument("--tables", action="store_true", help="re-render the .md from the JSON")
  args = parser.parse_args(argv)
  out = pathlib.Path(args.json)
  if args.tables:
    out.with_suffix(".md").write_text(markdown(json.loads(out.read_text())))
    return
  names = args.images.split(",")
  if unknown := set(names) - set(IMAGES):
    parser.error(f"unknown images {sorted(unknown)}; choose from {', '.join(IMAGES)}")
  start = time.perf_counter()
  split = {name: halves(load_gray(IMAGES[name]), args.size) for name in names}
  cones, fit_seconds = timed(lambda: conejax.fit_patch_cones(
      [train for train, _ in split.values()], args.patch, key=jax.random.key(0),
      rank=args.rank, n_cones=args.n_cones, n_train=args.n_train))
  settings = dict(n_iter=args.n_iter, stride=args.stride, tau=0.5, sigma_start=0.1,
                  cg_iter=5)
  rows, panels, shapes = [], {}, set()
  factors = [int(f) for f in args.factors.split(",")]
  with tqdm(total=len(names) * len(factors), desc="super-resolution") as progress:
    for factor in factors:
      panels[factor] = {}
      for name, (_, truth) in split.items():
        row, panels[factor][name] = super_resolve(cones, truth, factor, settings, args.block)
        rows.append(dict(image=name, compiled=(truth.shape, factor) not in shapes, **row))
        shapes.add((truth.shape, factor))
        progress.update(1)
  meta = dict(command="python experiments/microscopy_uncertainty.py" + "".join(
                  f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
              seconds=time.perf_counter() - start, fit_seconds=fit_seconds,
              cpus=os.cpu_count(),
              date=time.strftime("%Y-%m-%d"), platform=platform.platform(),
              cones=f"{args.n_cones} signed cones x rank {args.rank}, {args.patch}x{args.patch} "
                    f"patches, {args.n_train} training patches",
              settings=", ".join(f"{k}={v}" for k, v in settings.items()),
              block=args.block, size=args.size)
  result = dict(meta=meta, rows=rows)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=1))
  for factor in factors:
    figure(out.with_name(f"{out.stem}_sr{factor}.png"), factor, panels[factor])
  out.with_suffix(".md").write_text(markdown(result))
  print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
  main()
