"""One pretrained cone, many inverse problems: MNIST against the classical method of each task.

    python experiments/inverse_problems.py --data ../shared/data/mnist.npz

Every task degrades 500 test digits (values in [0, 1]); the classical baseline and conejax
each tune their parameter on a separate validation split (held-out training digits), then
run once on the test digits. Writes results/inverse_problems.{md,json} and one PNG panel
per task (rows: degraded, baseline, conejax, truth). Timings are conejax's second call on
the test digits (compilation apart).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from scipy import ndimage
from skimage import restoration, transform
from skimage.metrics import structural_similarity
from tqdm import tqdm

import conejax
from conejax import operators
from conejax.data import load_mnist

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

SHAPE = (28, 28)
M = 784
MU_GRID = (0.0, 0.1, 0.3, 1.0)
# Images need only a few digits: every conejax solve stops at this KKT residual (the
# library's default is 1e-6 in float32, 1e-4 for the L1 fit).
SOLVER = dict(tol=1e-3, max_iter=500)
# One operator shared by every digit: ADMM factorises the Gram matrix once and reaches the
# tolerance in a fraction of APG's iterations on blurred and subsampled atoms, at a lower
# objective (experiments/bench_inverse.py times both). Masks differ per digit: APG.
SHARED_SOLVER = "admm"
# The L1 fit's duality-gap tolerance is stricter than images need: on 10% salt-and-pepper
# (640-atom union, keep 0.5) the PSNR is 25.30 dB after 100 iterations, 25.29 after 500 and
# 25.32 after 2000, at 12x the time, so the L1 fits stop at 100.
SOLVER_L1 = dict(tol=1e-3, max_iter=100)
# The exemplar cone (atoms: training digits themselves) fills large holes best; it is costly
# (d = 10000) and loses to the trained cones elsewhere, so it runs on inpainting only.
EXEMPLARS = 1000
EXEMPLAR_TASKS = ("inpainting",)


# ----------------------------------------------------------------------------- metrics

def psnr(estimate, truth):
  """Per-image PSNR in dB for images in [0, 1] (estimates clipped to [0, 1])."""
  mse = np.mean((np.clip(estimate, 0, 1) - truth) ** 2, axis=-1)
  return 10 * np.log10(1.0 / np.maximum(mse, 1e-12))


def ssim(estimate, truth):
  return np.array([structural_similarity(np.clip(e, 0, 1).reshape(SHAPE), t.reshape(SHAPE),
                                         data_range=1.0) for e, t in zip(estimate, truth)])


# ----------------------------------------------------------------------------- tasks
# A task degrades clean rows U (n, 784) with an explicit numpy generator; it returns the
# observations and what each method needs to know about the degradation.

def gaussian_noise(sigma):
  def degrade(U, rng):
    return dict(v=U + sigma * rng.standard_normal(U.shape), A=None)
  return degrade


def salt_and_pepper(fraction):
  def degrade(U, rng):
    hit = rng.random(U.shape) < fraction
    return dict(v=np.where(hit, rng.integers(0, 2, U.shape), U), A=None)
  return degrade


def band_response(low=6, high=9):
  """1 outside the known band of periodic-noise frequencies (radius low..high cycles), 0 in it."""
  f = np.fft.fftfreq(SHAPE[0]) * SHAPE[0]
  radius = np.hypot(*np.meshgrid(f, f, indexing="ij"))
  return ((radius < low) | (radius > high)).astype(np.float64)


def periodic_noise(amplitude=0.3, low=6, high=9):
  """A 2-D sinusoid, random frequency in the known band and random phase, added per image."""
  rows, cols = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")

  def degrade(U, rng):
    r = rng.uniform(low + 0.5, high - 0.5, len(U))
    angle = rng.uniform(0, np.pi, len(U))
    fr, fc = np.round(r * np.cos(angle)), np.round(r * np.sin(angle))
    phase = rng.uniform(0, 2 * np.pi, len(U))
    waves = np.cos(2 * np.pi * (fr[:, None, None] * rows + fc[:, None, None] * cols) / SHAPE[0]
                   + phase[:, None, None])
    return dict(v=U + amplitude * waves.reshape(len(U), M), A=None,
                response=band_response(low, high))
  return degrade


def missing_pixels(fraction):
  def degrade(U, rng):
    keep = (rng.random(U.shape) >= fraction).astype(np.float64)
    return dict(v=U * keep, mask=keep)
  return degrade


def missing_block(side=10):
  def degrade(U, rng):
    keep = np.ones((len(U),) + SHAPE)
    corners = rng.integers(4, SHAPE[0] - side - 4, (len(U), 2))
    for image, (r, c) in zip(keep, corners):
      image[r:r + side, c:c + side] = 0
    keep = keep.reshape(len(U), M)
    return dict(v=U * keep, mask=keep)
  return degrade


BOX = np.ones((5, 5)) / 25


def box_blur(sigma=0.01):
  A = operators.blur(BOX, SHAPE, boundary="zero")

  def degrade(U, rng):
    return dict(v=np.asarray(operators.apply(A, U)) + sigma * rng.standard_normal(U.shape), A=A)
  return degrade


def gaussian_sensing(k):
  A = operators.gaussian_sensing(jax.random.key(k), k, M)

  def degrade(U, rng):
    return dict(v=np.asarray(operators.apply(A, U)), A=A)
  return degrade


def downsampling(factor):
  A = operators.downsample(factor, SHAPE)

  def degrade(U, rng):
    return dict(v=np.asarray(operators.apply(A, U)), A=A, factor=factor)
  return degrade


# ----------------------------------------------------------------------------- baselines
# Each baseline maps (observation dict, parameter) to estimates (n, 784), with a grid to tune.

def _per_image(fn, V):
  return np.stack([fn(v.reshape(SHAPE)).reshape(-1) for v in V])


def gaussian_filter(obs, s):
  return _per_image(lambda x: ndimage.gaussian_filter(x, s), obs["v"])


def total_variation(obs, weight):
  return _per_image(lambda x: restoration.denoise_tv_chambolle(x, weight=weight), obs["v"])


def median_filter(obs, size):
  return _per_image(lambda x: ndimage.median_filter(x, size=size), obs["v"])


def notch_filter(obs, _):
  return np.real(np.fft.ifft2(np.fft.fft2(obs["v"].reshape((-1,) + SHAPE))
                              * obs["response"])).reshape(-1, M)


def biharmonic(obs, _):
  return np.stack([restoration.inpaint_biharmonic(v.reshape(SHAPE), (k == 0).reshape(SHAPE))
                   .reshape(-1) for v, k in zip(obs["v"], obs["mask"])])


def wiener_deconvolution(obs, balance):
  """Tikhonov-regularised inverse filter in Fourier space (circular boundary)."""
  kernel = np.zeros(SHAPE)
  kernel[:5, :5] = BOX
  kernel = np.roll(kernel, (-2, -2), axis=(0, 1))
  K = np.fft.fft2(kernel)
  spectrum = np.fft.fft2(obs["v"].reshape((-1,) + SHAPE)) * np.conj(K) / (np.abs(K) ** 2 + balance)
  return np.real(np.fft.ifft2(spectrum)).reshape(-1, M)


def minimum_norm(obs, _):
  A = np.asarray(operators.materialise(obs["A"]))  # the baseline needs the matrix; conejax does not
  return obs["v"] @ np.linalg.pinv(A).T


def bicubic(obs, _):
  f = obs["factor"]
  small = (SHAPE[0] // f, SHAPE[1] // f)
  return np.stack([transform.resize(v.reshape(small), SHAPE, order=3, mode="edge").reshape(-1)
                   for v in obs["v"]])


# ----------------------------------------------------------------------------- conejax

def cone_reconstruction(dictionary, obs, mu_h, loss, select, shared_solver=SHARED_SOLVER):
  """Projects the observations onto cone(A W): conejax's ``Reconstruction`` (u = W h*, ...).

  ``shared_solver`` picks the l2 solver where one operator serves every digit.
  """
  v = jnp.asarray(obs["v"], jnp.float32)
  if "mask" in obs:
    masks = jax.vmap(operators.mask)(jnp.asarray(obs["mask"], jnp.float32))
    return conejax.reconstruct(dictionary, v, masks, mu_h=mu_h, loss=loss, select=select,
                               per_sample_operator=True,
                               **(SOLVER_L1 if loss == "l1" else SOLVER))
  A = obs.get("A")
  if "response" in obs:
    A = operators.fourier_filter(obs["response"], SHAPE)
    v = operators.apply(A, v)
  solver = SOLVER_L1 if loss == "l1" else dict(SOLVER, solver=shared_solver)
  return conejax.reconstruct(dictionary, v, A, mu_h=mu_h, loss=loss, select=select, **solver)


def cone_estimate(dictionary, obs, mu_h, loss, select):
  """The estimates W h* (n, 784) of ``cone_reconstruction`` as a numpy array."""
  return np.asarray(cone_reconstruction(dictionary, obs, mu_h, loss, select).u)


def refinement(make):
  """The library's refinement ``make(p)`` (``conejax.Blend``, ``Keep`` or ``Fill``) as a
  function of (observations, estimates, p): one solve per mu_h serves its whole grid."""
  def refine(obs, u, p):
    A, per_sample = None, False
    if "mask" in obs:  # the pixels each digit shows
      A, per_sample = jax.vmap(operators.mask)(jnp.asarray(obs["mask"], jnp.float32)), True
    return np.asarray(conejax.refine(make(p), jnp.asarray(obs["v"], jnp.float32), u, A,
                                     per_sample_operator=per_sample))
  return refine


# Gaussian noise: the MAP blend u = alpha v + (1 - alpha) W h*; impulsive noise: the observed
# pixels the L1 fit explains; missing pixels: the observed ones kept and the cone's fill
# corrected by its residual, interpolated by a Gaussian of this width (see conejax.refine).
REFINEMENTS = {None: (None, (None,)),
               "fill": (refinement(lambda width: conejax.Fill(width, SHAPE)),
                        (0.0, 0.3, 0.5, 0.7, 1.0, 1.5)),
               "blend": (refinement(conejax.Blend), (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)),
               "keep": (refinement(conejax.Keep), (0.0, 0.1, 0.2, 0.3, 0.5, 0.7))}


# ----------------------------------------------------------------------------- the table

TASKS = [
    # (task, level, degrade, baselines [(name, fn, grid)], conejax loss, refinement)
    ("Gaussian denoising", "sigma 0.1", gaussian_noise(0.1),
     [("Gaussian filter", gaussian_filter, (0.4, 0.6, 0.8, 1.0, 1.3)),
      ("total variation", total_variation, (0.03, 0.06, 0.1, 0.15, 0.25))], "l2", "blend"),
    ("Gaussian denoising", "sigma 0.2", gaussian_noise(0.2),
     [("Gaussian filter", gaussian_filter, (0.6, 0.8, 1.0, 1.3, 1.6)),
      ("total variation", total_variation, (0.06, 0.1, 0.15, 0.25, 0.4))], "l2", "blend"),
    ("Gaussian denoising", "sigma 0.3", gaussian_noise(0.3),
     [("Gaussian filter", gaussian_filter, (0.8, 1.0, 1.3, 1.6, 2.0)),
      ("total variation", total_variation, (0.1, 0.15, 0.25, 0.4, 0.6))], "l2", "blend"),
    ("salt-and-pepper", "10%", salt_and_pepper(0.1),
     [("3x3 median filter", median_filter, (3,))], "l1", "keep"),
    ("salt-and-pepper", "30%", salt_and_pepper(0.3),
     [("3x3 median filter", median_filter, (3,))], "l1", "keep"),
    ("salt-and-pepper", "50%", salt_and_pepper(0.5),
     [("3x3 median filter", median_filter, (3,))], "l1", "keep"),
    ("periodic noise", "amplitude 0.3, band 6-9", periodic_noise(),
     [("Fourier notch filter", notch_filter, (None,))], "l2", None),
    ("inpainting", "50% missing", missing_pixels(0.5),
     [("biharmonic", biharmonic, (None,))], "l2", "fill"),
    ("inpainting", "80% missing", missing_pixels(0.8),
     [("biharmonic", biharmonic, (None,))], "l2", "fill"),
    ("inpainting", "10x10 block", missing_block(10),
     [("biharmonic", biharmonic, (None,))], "l2", "fill"),
    ("deblurring", "5x5 box + noise 0.01", box_blur(0.01),
     [("Wiener (Tikhonov) deconvolution", wiener_deconvolution, (1e-3, 3e-3, 1e-2, 3e-2, 0.1))],
     "l2", None),
    ("compressed sensing", "k = 100", gaussian_sensing(100),
     [("minimum-norm least squares", minimum_norm, (None,))], "l2", None),
    ("compressed sensing", "k = 200", gaussian_sensing(200),
     [("minimum-norm least squares", minimum_norm, (None,))], "l2", None),
    ("super-resolution", "2x", downsampling(2), [("bicubic", bicubic, (None,))], "l2", None),
    ("super-resolution", "4x", downsampling(4), [("bicubic", bicubic, (None,))], "l2", None),
]


def tune(method, grid, obs_val, U_val):
  scores = [np.mean(psnr(method(obs_val, p), U_val)) for p in grid]
  return grid[int(np.argmax(scores))]


def tune_cone(estimate, refine, grid, obs_val, U_val):
  """(mu_h, refinement parameter) of the best validation PSNR; one solve per mu_h."""
  best = (-np.inf, None, None)
  for mu in MU_GRID:
    u = estimate(obs_val, mu)
    for p in grid:
      score = np.mean(psnr(u if refine is None else refine(obs_val, u, p), U_val))
      best = max(best, (score, mu, p), key=lambda b: b[0])
  return best[1:]


def run_task(task, dictionaries, U_val, U_test, seed):
  name, level, degrade, baselines, loss, refinement = task
  refine, refine_grid = REFINEMENTS[refinement]
  obs_val = degrade(U_val, np.random.default_rng(seed))
  obs_test = degrade(U_test, np.random.default_rng(seed + 1))
  rows, estimates = [], {}
  for label, method, grid in baselines:
    p = tune(method, grid, obs_val, U_val)
    start = time.perf_counter()
    est = method(obs_test, p)
    seconds = time.perf_counter() - start
    estimates[label] = est
    rows.append(dict(task=name, level=level, method=label, parameter=p, seconds=seconds,
                     psnr=float(np.mean(psnr(est, U_test))),
                     ssim=float(np.mean(ssim(est, U_test)))))
  for label, (dictionary, select, only) in dictionaries.items():
    if only is not None and name not in only:
      continue
    estimate = lambda obs, mu: cone_estimate(dictionary, obs, mu, loss, select)
    mu, p = tune_cone(estimate, refine, refine_grid, obs_val, U_val)
    estimate(obs_test, mu)  # compile for the test shapes
    start = time.perf_counter()
    est = estimate(obs_test, mu)
    est = est if refine is None else refine(obs_test, est, p)
    seconds = time.perf_counter() - start
    estimates[label] = est
    how = loss if refinement is None else f"{loss}, {refinement} {p:g}"
    rows.append(dict(task=name, level=level, method=f"conejax {label} ({how})", parameter=mu,
                     seconds=seconds, psnr=float(np.mean(psnr(est, U_test))),
                     ssim=float(np.mean(ssim(est, U_test)))))
  return rows, obs_test, estimates


def panel(path, degraded, baseline, cone, truth, titles, n=8):
  fig, axes = plt.subplots(4, n, figsize=(n * 1.0, 4 * 1.25))
  fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.95, wspace=0.05, hspace=0.3)
  for row, (images, title) in enumerate(zip((degraded, baseline, cone, truth), titles)):
    for i in range(n):
      ax = axes[row, i]
      ax.axis("off")
      if images is not None:
        ax.imshow(np.clip(images[i], 0, 1).reshape(SHAPE), cmap="gray_r", vmin=0, vmax=1)
    # A row label above the first image, outside the layout so it never shrinks the images.
    axes[row, 0].text(0, 1.06, title, transform=axes[row, 0].transAxes, fontsize=8,
                      va="bottom")
  fig.savefig(path, dpi=110)
  plt.close(fig)


def show_degraded(obs):
  v = obs["v"]
  if "factor" in obs:
    f = obs["factor"]
    return np.kron(v.reshape((-1, SHAPE[0] // f, SHAPE[1] // f)), np.ones((f, f))).reshape(-1, M)
  return None if v.shape[1] != M else v


SEPARATION_MU = (0.0, 0.1, 0.3, 1.0)


def _median_psnr(cones, first, ones, mu_h):
  """Median PSNR of the components of first + ones; ``cones.classes`` are (digit, 1) sorted."""
  parts = np.asarray(conejax.separate(cones, first + ones, mu_h=mu_h))
  parts = parts[:, ::-1] if cones.classes[0] == 1 else parts
  return 0.5 * (np.median(psnr(parts[:, 0], first)) + np.median(psnr(parts[:, 1], ones)))


def separation(x_train, y_train, x_test, y_test, key, n=1000, n_val=200,
               digits=(0, 2, 3, 4, 5, 6, 7, 8, 9)):
  """Median PSNR of the two components of v = u_d + u_1 (reference protocol, d = 0) and d + 1.

  Rank-64 cones (``fit_cones`` defaults) of digit d and of 1, each from its first 5000
  training images; mu_h tuned on n_val mixtures of held-out training images (the last of
  each class); n test mixtures of random test images.
  """
  rng = np.random.default_rng(0)
  ones = x_test[y_test == 1]
  rows = []
  for digit in digits:
    index = [np.flatnonzero(y_train == c) for c in (digit, 1)]
    train = np.concatenate([i[:5000] for i in index])
    cones = conejax.fit_cones(x_train[train], y_train[train], 64, key=key)
    val = [x_train[i[-n_val:]] for i in index]
    mu_h = max(SEPARATION_MU, key=lambda mu: _median_psnr(cones, *val, mu))
    first = x_test[y_test == digit]
    a, b = first[rng.integers(0, len(first), n)], ones[rng.integers(0, len(ones), n)]
    conejax.separate(cones, a + b, mu_h=mu_h)  # compile
    start = time.perf_counter()
    score = _median_psnr(cones, a, b, mu_h)
    seconds = time.perf_counter() - start
    rows.append(dict(pair=f"{digit} + 1", median_psnr=float(score), mu_h=mu_h,
                     seconds=seconds, n=n))
  return rows


def markdown(rows, sep_rows):
  lines = ["| task | degradation | method | tuned parameter | PSNR dB | SSIM | seconds |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    p = "" if r["parameter"] is None else f"{r['parameter']:g}"
    lines.append(f"| {r['task']} | {r['level']} | {r['method']} | {p} | {r['psnr']:.2f} | "
                 f"{r['ssim']:.3f} | {r['seconds']:.2f} |")
  lines += ["", "| source separation (rank-64 cones, k-means start + 20 MU, Wiener mask) | "
            "tuned mu_h | median PSNR dB | seconds |", "|---|---|---|---|"]
  for r in sep_rows:
    lines.append(f"| {r['pair']} ({r['n']} test mixtures) | {r['mu_h']:g} | "
                 f"{r['median_psnr']:.2f} | {r['seconds']:.2f} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default=None, help="full mnist.npz (default: embedded subset)")
  parser.add_argument("--out", default="results")
  parser.add_argument("--n_test", type=int, default=500)
  parser.add_argument("--n_val", type=int, default=100)
  parser.add_argument("--tasks", default="all",
                      help="comma-separated task numbers, 'all' or 'none'; the results of "
                           "tasks not run are kept from the existing inverse_problems.json")
  parser.add_argument("--no_separation", action="store_true",
                      help="keep the separation results of the existing json")
  args = parser.parse_args(argv)
  tasks = {"all": None, "none": []}.get(args.tasks)
  tasks = [int(t) for t in args.tasks.split(",")] if tasks is None and args.tasks != "all" \
      else tasks
  return run(args.data, pathlib.Path(args.out), args.n_test, args.n_val, tasks,
             not args.no_separation)


def _merge(out, rows, sep_rows):
  """Rows of this run, plus those of tasks (or the separation) not rerun from the old json."""
  path = out / "inverse_problems.json"
  if not path.exists():
    return rows, sep_rows or []
  old = json.loads(path.read_text())
  done = {r["task"] + r["level"] for r in rows}
  kept = [r for r in old["rows"] if r["task"] + r["level"] not in done]
  order = {f"{t[0]}{t[1]}": i for i, t in enumerate(TASKS)}
  merged = sorted(kept + rows, key=lambda r: order.get(r["task"] + r["level"], len(TASKS)))
  return merged, old["separation"] if sep_rows is None else sep_rows


def _class_indices(y_train, n_val):
  """Per digit, the indices of its training images outside the validation tail."""
  return [np.flatnonzero(y_train[:-n_val] == c) for c in range(10)]


def class_union(x_train, y_train, n_val, rank, key):
  """(label, cones): ten parts-based class cones (NNDSVDa, 200 MU, 5000 images per digit).

  The reference recipe: their union fits unseen digits far better than the k-means cones
  that classify best.
  """
  per_class = np.concatenate([index[:5000] for index in _class_indices(y_train, n_val)])
  cones = conejax.fit_cones(x_train[per_class], y_train[per_class], rank, key=key,
                            init="nndsvda", max_iter=200, tol=0)
  return f"union of ten rank-{rank} class cones ({10 * rank} atoms)", cones


def _dictionaries(x_train, y_train, U_train, n_val, key, union_ranks=(64, 128), exemplars=True,
                  single=True):
  """label -> (dictionary, select, tasks it is used for or None for all).

  The single rank-64 cone (if ``single``), the unions of the ten class cones of each of
  ``union_ranks`` and, if ``exemplars``, for inpainting, the exemplar cone spanned by
  EXEMPLARS training digits per class (unit norm).
  """
  union = {}
  if single:
    W = conejax.nmf(U_train, 64, key=key, method="mu", max_iter=200, tol=0).W
    union["rank-64 cone"] = (W / jnp.linalg.norm(W, axis=0), "each", None)
  for rank in union_ranks:
    label, class_cones = class_union(x_train, y_train, n_val, rank, key)
    union[label] = (class_cones, "union", None)
  if not exemplars:
    return union
  classes = _class_indices(y_train, n_val)
  per_digit = min(EXEMPLARS, *map(len, classes))  # the embedded subset has fewer
  exemplars = np.stack([x_train[index[:per_digit]].T for index in classes])
  exemplars /= np.maximum(np.linalg.norm(exemplars, axis=1, keepdims=True), 1e-12)
  union[f"exemplar cone ({10 * per_digit} training digits)"] = (
      jnp.asarray(exemplars, jnp.float32), "union", EXEMPLAR_TASKS)
  return union


def run(data, out, n_test=500, n_val=100, tasks=None, separate=True, quick=False):
  """Runs ``tasks`` (indices into TASKS, None for all) and the separation; writes the tables.

  ``quick`` (the main job's default): the union of the rank-64 class cones only (no single
  cone, no exemplar cone), and the separation of 0 + 1 alone on 200 test mixtures.
  """
  out.mkdir(parents=True, exist_ok=True)
  x_train, y_train, x_test, y_test = load_mnist(data)
  key = jax.random.key(0)
  U_train = x_train[:5000]
  U_val, U_test = x_train[-n_val:].astype(np.float64), x_test[:n_test].astype(np.float64)
  rows, chosen = [], range(len(TASKS)) if tasks is None else tasks
  if chosen:
    dictionaries = _dictionaries(x_train, y_train, U_train, n_val, key,
                                 union_ranks=(64,) if quick else (64, 128), exemplars=not quick,
                                 single=not quick)
  for i in tqdm(chosen, desc="inverse problems", unit="task"):
    task = TASKS[i]
    task_rows, obs, estimates = run_task(task, dictionaries, U_val, U_test, seed=10 * i)
    rows += task_rows
    (out / "inverse_problems.partial.json").write_text(json.dumps(rows, indent=1))
    baseline = task_rows[0]["method"]
    best = max(task_rows[len(task[3]):], key=lambda r: r["psnr"])
    slug = "_".join(f"{task[0]} {task[1]}".replace("%", "pct").replace(",", "")
                    .replace("=", "").replace("+", "").split())
    panel(out / f"inverse_{slug}.png", show_degraded(obs), estimates[baseline],
          estimates[best["method"].removeprefix("conejax ").rsplit(" (", 1)[0]], U_test,
          ("degraded", baseline, best["method"], "truth"))
  sep_options = dict(digits=(0,), n=200, n_val=100) if quick else {}
  sep_rows = separation(x_train, y_train, x_test, y_test, key, **sep_options) if separate \
      else None
  rows, sep_rows = _merge(out, rows, sep_rows)
  table = markdown(rows, sep_rows)
  (out / "inverse_problems.md").write_text(table + "\n")
  (out / "inverse_problems.json").write_text(json.dumps(dict(rows=rows, separation=sep_rows),
                                                        indent=1))
  (out / "inverse_problems.partial.json").unlink(missing_ok=True)  # the final json replaces it
  print(table)
  return rows, sep_rows


if __name__ == "__main__":
  main()
