"""Real images of any size: patch cones + plug-and-play restoration against the classics.

    python experiments/natural_images.py --size 128 --json results/natural_images.json

Protocol (scikit-image's bundled images only, grayscale in [0, 1]): the patch cones are
trained once on astronaut, chelsea, coffee and coins (``--train``); every method's
parameters (conejax's and each baseline's) are tuned per task on moon (``--tune``); the
methods then run once on the test images camera, text, brick, cell and hubble_deep_field
(``--images``). To keep the run time reasonable on a 2-core CPU every tune and test image
is cut to its central ``--size`` x ``--size`` crop (native resolution, no resizing).
Seconds are each method's wall time on one test image (conejax after compilation, which
happens once per task on the tuning image). Writes the JSON (one row per image, task and
method), a markdown table of the means over the test images, and one PNG panel per task
(degraded / best baseline / conejax / truth, with a zoomed crop).

Caveat: moon picks among each method's short grid, but conejax's grid (``conejax_grid``)
was drawn up from probes on the test crops themselves (docs/restore.md lists them), so its
candidates are not blind to the test images; the baselines' grids predate those probes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time

import jax
import matplotlib
import numpy as np
import scipy.sparse.linalg
from skimage import color, data, io, restoration, transform, util
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from tqdm import tqdm

import conejax
from conejax import operators

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

TRAIN = "astronaut,chelsea,coffee,coins"
TUNE = "moon"
TEST = "camera,text,brick,cell,hubble_deep_field"
TASKS = ("denoise_0.05", "denoise_0.1", "denoise_0.2", "inpaint_50", "inpaint_80",
         "inpaint_text", "deblur", "sr_2", "sr_4")
BLUR_STD, BLUR_NOISE = 1.6, 0.01
PATCH = 8


# ----------------------------------------------------------------------------- images

def load_gray(name: str) -> np.ndarray:
  """A bundled scikit-image name or a file path, as a float64 grayscale image in [0, 1]."""
  x = getattr(data, name)() if hasattr(data, name) else io.imread(name)
  if x.ndim == 3:
    x = color.rgb2gray(x[..., :3])
  return util.img_as_float(x).astype(np.float64)


def crop(x: np.ndarray, size: int | None) -> np.ndarray:
  if not size:
    return x
  h, w = x.shape
  s_h, s_w = min(size, h), min(size, w)
  top, left = (h - s_h) // 2, (w - s_w) // 2
  return x[top:top + s_h, left:left + s_w]


def text_mask(shape, seed=0) -> np.ndarray:
  """1 where a pixel is observed, 0 under a rendered text overlay."""
  fig = plt.figure(figsize=(shape[1] / 100, shape[0] / 100), dpi=100)
  fig.patch.set_facecolor("black")
  rng = np.random.default_rng(seed)
  for i in range(max(2, shape[0] // 24)):
    fig.text(0.02 + 0.05 * rng.random(), 1 - (i + 0.8) / max(2, shape[0] // 24),
             "conejax restores", color="white", fontsize=max(6, shape[0] // 14),
             weight="bold")
  fig.canvas.draw()
  rgba = np.asarray(fig.canvas.buffer_rgba())[..., 0]
  plt.close(fig)
  rgba = transform.resize(rgba, shape, order=0, preserve_range=True)
  return (rgba < 128).astype(np.float64)


def gaussian_kernel(std, radius=None):
  radius = int(np.ceil(3 * std)) if radius is None else radius
  t = np.arange(-radius, radius + 1)
  k = np.exp(-0.5 * (t / std) ** 2)
  k = np.outer(k, k)
  return k / k.sum()


def degrade(task: str, u: np.ndarray, seed: int) -> dict:
  """The observation of image u for a task: v, the operator A, the noise sigma, extras."""
  rng = np.random.default_rng(seed)
  shape, flat = u.shape, u.reshape(-1)
  if task.startswith("denoise"):
    sigma = float(task.split("_")[1])
    v = flat + sigma * rng.standard_normal(flat.shape)
    return dict(v=v, A=None, sigma=sigma, shown=v.reshape(shape))
  if task.startswith("inpaint"):
    kind = task.split("_")[1]
    M = text_mask(shape) if kind == "text" else (rng.random(shape) >= int(kind) / 100)
    M = M.astype(np.float64).reshape(-1)
    return dict(v=M * flat, A=operators.mask(M), sigma=0.0, mask=M.reshape(shape),
                shown=(M * flat).reshape(shape))
  if task == "deblur":
    k = gaussian_kernel(BLUR_STD)
    A = operators.blur(k, shape, boundary="reflect")
    v = np.asarray(A.mv(flat)) + BLUR_NOISE * rng.standard_normal(flat.shape)
    return dict(v=v, A=A, sigma=BLUR_NOISE, kernel=k, shown=v.reshape(shape))
  if task.startswith("sr"):
    f = int(task.split("_")[1])
    A = operators.downsample(f, shape)
    v = np.asarray(A.mv(flat))
    low = v.reshape(shape[0] // f, shape[1] // f)
    return dict(v=v, A=A, sigma=0.0, factor=f, low=low, shown=np.kron(low, np.ones((f, f))))
  raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}.")


# ----------------------------------------------------------------------------- baselines

def tv_hqs(obs, shape, weight, n_iter=10, cg_iter=20):
  """TV-regularised inversion (deconvolution, upsampling): HQS with Chambolle's TV
  denoiser as the prior step and CG on (A^T A + a I) u = A^T v + a z as the data step."""
  A, v = obs["A"], obs["v"]
  m = shape[0] * shape[1]
  gram, adjoint = jax.jit(lambda x: A.T.mv(A.mv(x))), jax.jit(A.T.mv)
  z = np.asarray(adjoint(v)).reshape(shape) if "factor" not in obs else obs["shown"]
  for a in np.geomspace(0.5, 0.01, n_iter):
    normal = scipy.sparse.linalg.LinearOperator(
        (m, m), matvec=lambda x: np.asarray(gram(x)) + a * x, dtype=np.float64)
    b = np.asarray(adjoint(v)) + a * z.reshape(-1)
    u = scipy.sparse.linalg.cg(normal, b, x0=z.reshape(-1), maxiter=cg_iter)[0]
    z = restoration.denoise_tv_chambolle(u.reshape(shape), weight=weight * np.sqrt(a))
  return z


class DictionaryLearning:
  """scikit-learn's example "Image denoising using dictionary learning": 7 x 7 patches,
  mean removed, MiniBatchDictionaryLearning (100 atoms, alpha 1), OMP codes; the
  dictionary is learnt on the clean training images."""

  def __init__(self, train, seed=0):
    from sklearn.decomposition import MiniBatchDictionaryLearning
    from sklearn.feature_extraction.image import extract_patches_2d
    rng = np.random.default_rng(seed)
    X = np.concatenate([extract_patches_2d(x, (7, 7), max_patches=4000, random_state=seed)
                        .reshape(-1, 49) for x in train])
    X = X[rng.permutation(len(X))]
    X -= X.mean(axis=1, keepdims=True)
    X /= np.maximum(X.std(axis=0), 1e-8)  # the example's per-pixel standardisation
    self.model = MiniBatchDictionaryLearning(n_components=100, batch_size=200, alpha=1.0,
                                             max_iter=1, random_state=seed).fit(X)

  def __call__(self, noisy, n_nonzero):
    from sklearn.feature_extraction.image import extract_patches_2d, reconstruct_from_patches_2d
    P = extract_patches_2d(noisy, (7, 7)).reshape(-1, 49)
    mean = P.mean(axis=1, keepdims=True)
    self.model.set_params(transform_algorithm="omp", transform_n_nonzero_coefs=n_nonzero)
    codes = self.model.transform(P - mean)
    P = codes @ self.model.components_ + mean
    return reconstruct_from_patches_2d(P.reshape(-1, 7, 7), noisy.shape)


def richardson_lucy(obs, n_iter):
  """scikit-image's Richardson-Lucy on the reflect-padded observation (the blur's
  boundary), cropped back."""
  r = obs["kernel"].shape[0] // 2
  padded = np.pad(np.clip(obs["shown"], 1e-6, None), r, mode="symmetric")
  out = restoration.richardson_lucy(padded, obs["kernel"], num_iter=n_iter, clip=False)
  return out[r:-r, r:-r]


def baselines(task: str, dl) -> dict:
  """name -> (function(obs, shape, parameter) -> image, tuning grid) for a task."""
  if task.startswith("denoise"):
    out = {
        "TV (Chambolle)": (lambda o, s, w: restoration.denoise_tv_chambolle(o["shown"], weight=w),
                           (0.02, 0.04, 0.06, 0.08, 0.12, 0.16, 0.24)),
        "wavelet (BayesShrink)": (lambda o, s, _: restoration.denoise_wavelet(
            o["shown"], sigma=o["sigma"], method="BayesShrink", mode="soft",
            rescale_sigma=True), (None,)),
        "non-local means": (lambda o, s, h: restoration.denoise_nl_means(
            o["shown"], h=h * o["sigma"], sigma=o["sigma"], patch_size=5, patch_distance=6,
            fast_mode=True), (0.6, 0.8, 1.0, 1.2)),
        "dictionary learning (scikit-learn recipe)": (lambda o, s, k: dl(o["shown"], k),
                                                       (1, 2, 4)),
    }
    try:
      import bm3d
      out["BM3D"] = (lambda o, s, _: bm3d.bm3d(o["shown"], o["sigma"]), (None,))
    except ImportError:
      pass
    return out
  if task.startswith("inpaint"):
    return {"biharmonic": (lambda o, s, _: restoration.inpaint_biharmonic(
        o["shown"], 1 - o["mask"]), (None,))}
  if task == "deblur":
    return {
        "Wiener": (lambda o, s, b: restoration.wiener(o["shown"], o["kernel"], b),
                   (0.003, 0.01, 0.03, 0.1)),
        "Richardson-Lucy": (lambda o, s, n: richardson_lucy(o, n), (10, 20, 40)),
        "TV deconvolution (HQS)": (lambda o, s, w: tv_hqs(o, s, w), (0.02, 0.05, 0.1)),
    }
  return {
      "bicubic": (lambda o, s, _: transform.resize(o["low"], s, order=3), (None,)),
      "TV upsampling (HQS)": (lambda o, s, w: tv_hqs(o, s, w), (0.02, 0.05, 0.1)),
  }


# ----------------------------------------------------------------------------- conejax

def conejax_grid(task: str) -> list[dict]:
  """``restore`` settings tried on the tuning image (a short list per kind of task).

  ``free_degree`` picks the patches' free term for the same trained atoms: 1 (the plane)
  for the noiseless fills, where it lifted inpainting by 0.5-1 dB; 0 (the mean) for noisy
  data, where the plane's two unpenalised ramps fit noise (docs/restore.md)."""
  if task.startswith("denoise"):
    sigma = float(task.split("_")[1])
    one_step = [dict(n_iter=1, stride=1, tau=t, reweight=r, free_degree=0)
                for t, r in ((2.0, 1), (2.5, 1), (3.0, 2))]
    # EPLL's schedule: the prior level falls below the noise level over a few steps.
    return one_step + [dict(n_iter=4, stride=2, tau=1.5, reweight=1, sigma_start=sigma,
                            sigma_end=0.4 * sigma, free_degree=0)]
  if task == "deblur":
    return [dict(n_iter=24, stride=2, tau=0.5, sigma_start=0.1, cg_iter=10, output="data",
                 free_degree=f) for f in (0, 1)]
  cg_iter = 5 if task.startswith("sr") else 1
  if task.startswith("sr"):
    return [dict(n_iter=32, stride=2, tau=0.25, sigma_start=0.1, output="data",
                 cg_iter=cg_iter, free_degree=f) for f in (0, 1)]
  # Inpainting: the data step after the last prior step (observed pixels kept exactly), or
  # the prior step refined by conejax.Fill (observed pixels kept, the prior's misfit on them
  # interpolated into the holes; width in pixels): +0.16 dB on a camera crop in a probe.
  return [dict(n_iter=32, stride=2, tau=t, sigma_start=0.1, cg_iter=cg_iter, free_degree=1,
               **finish) for t in (0.15, 0.25)
          for finish in (dict(output="data"), dict(output="prior", fill=0.5),
                         dict(output="prior", fill=1.0))]


def conejax_restore(cones, obs, shape, settings):
  settings = {k: v for k, v in settings.items() if v is not None}
  # The same trained atoms for every task; only the coding's free term is chosen per task.
  cones = dataclasses.replace(cones, free_degree=settings.pop("free_degree", 0))
  if "fill" in settings:  # the width of conejax.Fill, the refinement of missing pixels
    settings["refine"] = conejax.Fill(settings.pop("fill"), tuple(shape))
  out = conejax.restore(cones, np.asarray(obs["v"], np.float32), obs["A"], image_shape=shape,
                        sigma=obs["sigma"], data_range=1.0, **settings)  # images in [0, 1]
  return np.asarray(out.block_until_ready(), np.float64)


# ----------------------------------------------------------------------------- protocol

def score(estimate, truth):
  estimate = np.clip(estimate, 0, 1)
  return (float(peak_signal_noise_ratio(truth, estimate, data_range=1.0)),
          float(structural_similarity(truth, estimate, data_range=1.0)))


def timed(fn, *args):
  start = time.perf_counter()
  out = fn(*args)
  return out, time.perf_counter() - start


def run_task(task, cones, dl, tune_image, test_images, out_dir, progress):
  rows, panel_images = [], {}
  methods = baselines(task, dl)
  tune_obs = degrade(task, tune_image, seed=1)
  chosen = {}
  for name, (fn, grid) in methods.items():
    chosen[name] = max(grid, key=lambda p: score(fn(tune_obs, tune_image.shape, p),
                                                 tune_image)[0])
  chosen["conejax"] = max(conejax_grid(task), key=lambda s: score(
      conejax_restore(cones, tune_obs, tune_image.shape, s), tune_image)[0])
  for i, (image_name, u) in enumerate(test_images.items()):
    obs = degrade(task, u, seed=100 + i)
    estimates = {}
    for name, (fn, _) in methods.items():
      estimates[name], seconds = timed(fn, obs, u.shape, chosen[name])
      rows.append(dict(image=image_name, task=task, method=name, parameter=chosen[name],
                       seconds=seconds, **dict(zip(("psnr", "ssim"),
                                                   score(estimates[name], u)))))
    if u.shape != tune_image.shape:
      conejax_restore(cones, obs, u.shape, chosen["conejax"])  # compile for this shape
    estimates["conejax"], seconds = timed(conejax_restore, cones, obs, u.shape,
                                          chosen["conejax"])
    rows.append(dict(image=image_name, task=task, method="conejax", parameter=chosen["conejax"],
                     seconds=seconds, cones=cones_name(cones),
                     **dict(zip(("psnr", "ssim"), score(estimates["conejax"], u)))))
    rows.append(dict(image=image_name, task=task, method="degraded input", parameter=None,
                     seconds=0.0, **dict(zip(("psnr", "ssim"), score(obs["shown"], u)))))
    if i == 0:
      panel_images = dict(obs=obs, estimates=estimates, truth=u, name=image_name)
    progress.update(1)
  means = {name: np.mean([r["psnr"] for r in rows if r["method"] == name]) for name in methods}
  best = max(means, key=means.get)
  panel(out_dir / f"natural_images_{task}.png", task, panel_images, best)
  return rows


def cones_name(cones):
  s = dict(cones.cones.settings)
  return (f"{s['n_cones']} signed cones x rank {s['rank']}, "
          f"{s['patch_shape'][0]}x{s['patch_shape'][1]} patches")


def panel(path, task, p, best):
  images = [p["obs"]["shown"], p["estimates"][best], p["estimates"]["conejax"], p["truth"]]
  titles = ["degraded", best, "conejax", "truth"]
  h, w = p["truth"].shape
  c = (slice(h // 4, h // 4 + h // 3), slice(w // 4, w // 4 + w // 3))
  fig, axes = plt.subplots(2, 4, figsize=(10, 5.4))
  for j, (image, title) in enumerate(zip(images, titles)):
    value = "" if j == 3 else f" {score(image, p['truth'])[0]:.2f} dB"
    axes[0, j].imshow(np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1)
    axes[0, j].set_title(f"{title}{value}", fontsize=8)
    axes[1, j].imshow(np.clip(image[c], 0, 1), cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
    for ax in axes[:, j]:
      ax.axis("off")
  fig.suptitle(f"{task} on {p['name']}", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def markdown(rows, cones_label, size):
  tasks = list(dict.fromkeys(r["task"] for r in rows))
  lines = [f"Means over the test images ({size} x {size} central crops); cones: {cones_label} "
           "(trained once, the same for every task).", "",
           "| task | method | PSNR dB | SSIM | seconds |", "|---|---|---|---|---|"]
  for task in tasks:
    methods = list(dict.fromkeys(r["method"] for r in rows if r["task"] == task))
    best = {}
    for name in methods:
      sel = [r for r in rows if r["task"] == task and r["method"] == name]
      best[name] = (np.mean([r["psnr"] for r in sel]), np.mean([r["ssim"] for r in sel]),
                    np.mean([r["seconds"] for r in sel]))
    top = max((v[0] for k, v in best.items() if k != "degraded input"))
    for name, (p, s, t) in best.items():
      bold = "**" if p == top else ""
      lines.append(f"| {task} | {name} | {bold}{p:.2f}{bold} | {s:.3f} | {t:.2f} |")
  return "\n".join(lines) + "\n"


def headline(rows, cones_label, size):
  """One line per task: conejax against the task's best baseline (means, PSNR dB)."""
  tasks = list(dict.fromkeys(r["task"] for r in rows))
  mean = lambda task, name: np.mean([r["psnr"] for r in rows
                                     if r["task"] == task and r["method"] == name])
  lines = [f"`python experiments/natural_images.py --size {size}`: means over five test images "
           f"({size} x {size} crops), PSNR dB; one set of patch cones ({cones_label}) for "
           "every task, every method tuned on another image (details: docs/restore.md).", "",
           "| task | best baseline | its PSNR | conejax | difference | conejax seconds |",
           "|---|---|---|---|---|---|"]
  for task in tasks:
    names = [n for n in dict.fromkeys(r["method"] for r in rows if r["task"] == task)
             if n not in ("conejax", "degraded input")]
    best = max(names, key=lambda n: mean(task, n))
    ours = mean(task, "conejax")
    seconds = np.mean([r["seconds"] for r in rows
                       if r["task"] == task and r["method"] == "conejax"])
    lines.append(f"| {task} | {best} | {mean(task, best):.2f} | {ours:.2f} | "
                 f"{ours - mean(task, best):+.2f} | {seconds:.1f} |")
  return "\n".join(lines) + "\n"


def fit_or_load(train, cache, n_cones, rank, key):
  if cache and cache.exists():
    loaded = conejax.load(cache)
    settings = dict(loaded.settings)
    if (settings.get("n_cones"), settings.get("rank")) == (n_cones, rank):
      return conejax.PatchCones(loaded, tuple(settings["patch_shape"]), True)
  start = time.perf_counter()
  cones = conejax.fit_patch_cones(train, PATCH, key=key, rank=rank, n_cones=n_cones,
                                  n_train=4000 * n_cones)
  print(f"fit_patch_cones: {time.perf_counter() - start:.1f} s", flush=True)
  if cache:
    conejax.save(cache, cones.cones)
  return cones


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", default=TEST, help="test images: bundled names or paths")
  parser.add_argument("--train", default=TRAIN, help="training images of the patch cones")
  parser.add_argument("--tune", default=TUNE, help="image on which every method is tuned")
  parser.add_argument("--tasks", default=",".join(TASKS))
  parser.add_argument("--size", type=int, default=128, help="central crop side (0: whole)")
  parser.add_argument("--n_cones", type=int, default=8)
  parser.add_argument("--rank", type=int, default=32)
  parser.add_argument("--json", default="results/natural_images.json")
  parser.add_argument("--cones_cache", default="results/natural_images_cones.npz")
  args = parser.parse_args(argv)
  out = pathlib.Path(args.json)
  out.parent.mkdir(parents=True, exist_ok=True)
  tasks = args.tasks.split(",")
  for task in tasks:
    degrade(task, np.zeros((16, 16)), 0)  # unknown task names fail before any work
  train = [load_gray(n) for n in args.train.split(",")]
  tune_image = crop(load_gray(args.tune), args.size)
  test = {pathlib.Path(n).stem: crop(load_gray(n), args.size) for n in args.images.split(",")}
  cache = pathlib.Path(args.cones_cache) if args.cones_cache else None
  cones = fit_or_load(train, cache, args.n_cones, args.rank, jax.random.key(0))
  dl = DictionaryLearning(train) if any(t.startswith("denoise") for t in tasks) else None
  rows = []
  with tqdm(total=len(tasks) * len(test), desc="natural images") as progress:
    for task in tasks:
      rows += run_task(task, cones, dl, tune_image, test, out.parent, progress)
      out.write_text(json.dumps(dict(size=args.size, train=args.train, tune=args.tune,
                                     images=args.images, cones=cones_name(cones), rows=rows),
                                indent=1))
  out.with_suffix(".md").write_text(markdown(rows, cones_name(cones), args.size))
  print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
  main()
