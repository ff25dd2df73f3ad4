"""The main job: every capability of conejax on MNIST, in one run, with a report.

    python experiments/reproduce.py                  # quick form on the embedded subset
    python experiments/reproduce.py --smoke          # tiny sizes: CI's check
    python experiments/reproduce.py --full --data ../shared/data/mnist.npz   # heavy settings

Sections (a progress bar names each as it runs): sparse NNLS solvers against scipy, sparse
NMF bases, nearest-cone classification (0 vs 1, ten digits against baselines), the plug-and-
play uses (anomaly scores, k-cones clustering, compression, features), inverse problems and
source separation, fine-tuning with optax, restoration of a natural image with patch cones,
scale-out over a device mesh, streaming NMF, the scikit-learn estimators, and
experiments/reuse.py --quick (classification under operators, transfer, calibration).

Writes OUT/REPORT.md (with its figures; experiments/reproduce_report.py writes it),
OUT/reproduce.json (every number, structured) and the wall and CPU time of each section
(docs/results.md shows the latest, cold and warm: most of the CPU time is XLA compiling,
which JAX's persistent compilation cache saves on reruns). The sub-experiments' own tables (inverse problems, fine-tuning, reuse) go to OUT
with ``--full`` and to OUT/quick otherwise, so a quick run never overwrites the full runs'
results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import subprocess
import sys
import time

if "--smoke" in sys.argv:  # smoke runs are compile-bound: ask XLA for quick, plain code
  os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                        "--xla_llvm_disable_expensive_passes=true "
                        "--xla_cpu_use_fusion_emitters=false")

import jax  # noqa: E402  (after XLA_FLAGS)
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
from sklearn.metrics import adjusted_rand_score, roc_auc_score
from tqdm import tqdm

import conejax
from conejax.data import load_mnist

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

import baselines  # noqa: E402  (experiments/ is the script's own folder)
import finetune  # noqa: E402
import inverse_problems  # noqa: E402
from reproduce_report import write_report  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"), "conejax",
                     "jax")
# The configuration experiments/sweep_cones.py found best among plain cones.
BEST = dict(init="kmeans", method="mu", max_iter=20, tol=0)
REFERENCE = dict(init="nndsvda", method="mu", max_iter=200, tol=0)

# Sizes of each mode. n_train / n_test: images per digit (None: all); the rest per section.
MODES = {
    "smoke": dict(n_train=100, n_test=20, bases_n=300, bases_iter=20, ranks=(8,), ref_ranks=(),
                  solvers=("ActiveSet",), mlp=False, nnls_n=50, kcones_iter=1,
                  compress=(), inverse_tasks=(1,), inverse_n=(20, 20), finetune_steps=4,
                  restore_size=32, restore_rank=8, restore_cones=1, stream_chunk=200,
                  stream_epochs=1, sklearn_cv=False, sharding_devices=0),
    "quick": dict(n_train=None, n_test=100, bases_n=5000, bases_iter=200, ranks=(16, 64),
                  ref_ranks=(), solvers=("ActiveSet", "ADMM"), mlp=True, nnls_n=1000,
                  kcones_iter=2, compress=(10,), inverse_tasks=(1, 10), inverse_n=(100, 100),
                  finetune_steps=40, restore_size=48, restore_rank=16, restore_cones=1,
                  stream_chunk=1000, stream_epochs=2, sklearn_cv=False, sharding_devices=2),
    "full": dict(n_train=None, n_test=None, bases_n=5000, bases_iter=200, ranks=(16, 32, 64, 128,
                 256), ref_ranks=(16, 32, 64), solvers=("ActiveSet", "APG", "ADMM"), mlp=True,
                 nnls_n=2000, kcones_iter=10, compress=(5, 10, 20), inverse_tasks=None,
                 inverse_n=(500, 100), finetune_steps=None, restore_size=128, restore_rank=32,
                 restore_cones=2, stream_chunk=1000, stream_epochs=5, sklearn_cv=True,
                 sharding_devices=8),
}
SOLVERS = {"ActiveSet": ("ActiveSet (exact, the default)", conejax.solvers.ActiveSet),
           "APG": ("APG", conejax.solvers.APG), "ADMM": ("ADMM", conejax.solvers.ADMM)}


def timed(fn):
  """(fn(), wall seconds), blocking on JAX's asynchronous results."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start


def cpu_seconds():
  """CPU time of this process and of its finished subprocesses (user + system)."""
  return sum(os.times()[:4])


def warm_timed(fn):
  """(fn(), wall seconds of a second call): compilation excluded."""
  jax.block_until_ready(fn())
  return timed(fn)


def per_class(y, n, rng):
  """Indices of the first ``n`` samples of each label (all of them when n is None)."""
  if n is None:
    return np.arange(len(y))
  return np.sort(np.concatenate([np.flatnonzero(y == c)[:n] for c in np.unique(y)]))


def image_grid(images, rows, cols, path, titles=None, shape=(28, 28)):
  fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.95))
  for i, ax in enumerate(np.ravel(axes)):
    ax.axis("off")
    if i < len(images):
      ax.imshow(np.asarray(images[i]).reshape(shape), cmap="gray_r")
      if titles is not None:
        ax.set_title(titles[i], fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ----------------------------------------------------------------------------- sections
# Each section takes the run's context (data, key, sizes, output folder), adds its numbers
# to ctx.report under its own name and returns nothing.

class Context:
  def __init__(self, data, mode, out, key):
    self.x_train, self.y_train, self.x_test, self.y_test = data
    self.mode, self.size, self.out, self.key = mode, MODES[mode], out, key
    self.report = {}
    self.sub_out = out if mode == "full" else out / mode
    self.cones = {}


def nnls_solvers(ctx):
  """Codes of test digits on one NMF dictionary: every solver against scipy.optimize.nnls."""
  W = ctx.cones["all"].W[0]
  V = ctx.x_test[:ctx.size["nnls_n"]]
  Wn, Vn = np.asarray(W, np.float64), np.asarray(V, np.float64)
  start = time.perf_counter()
  reference = np.stack([scipy.optimize.nnls(Wn, v)[0] for v in Vn])
  scipy_s = time.perf_counter() - start
  f_ref = 0.5 * np.sum((reference @ Wn.T - Vn) ** 2, axis=1)
  rows = [dict(solver="scipy.optimize.nnls (loop)", seconds=scipy_s, max_gap=0.0)]
  for name, solver in (SOLVERS[s] for s in ctx.size["solvers"]):
    solver = solver()
    out, seconds = warm_timed(lambda: conejax.nnls(W, V, 0.0, solver=solver))
    h = np.asarray(out.h, np.float64)
    f = 0.5 * np.sum((h @ Wn.T - Vn) ** 2, axis=1)
    gap = np.max((f - f_ref) / np.maximum(f_ref, 1e-30))
    rows.append(dict(solver=name, seconds=seconds, max_gap=float(max(gap, 0.0)),
                     converged=float(np.mean(out.converged))))
  ctx.report["nnls"] = dict(n=len(V), d=int(W.shape[1]), rows=rows)


def bases(ctx):
  """A rank-64 sparse NMF of training images of all digits: its atoms, time and error."""
  U = ctx.x_train[:ctx.size["bases_n"]]
  run = lambda: conejax.nmf(U, 64, key=ctx.key, method="mu", max_iter=ctx.size["bases_iter"],
                            tol=0)
  fit, seconds = warm_timed(run)
  image_grid(np.asarray(fit.W).T, 8, 8, ctx.out / "bases.png")
  error = float(np.linalg.norm(U - np.asarray(fit.H) @ np.asarray(fit.W).T) / np.linalg.norm(U))
  ctx.report["bases"] = dict(n=len(U), iterations=ctx.size["bases_iter"], seconds=seconds,
                             rel_error=error)
  ctx.cones["all"] = conejax.make_cones(fit.W / np.linalg.norm(fit.W, axis=0), 0.0)


def zero_versus_one(ctx):
  """Digits 0 vs 1 by rank-64 cones (--full: also the reference recipe, fitted anew).

  Quick and smoke take the ten-digit section's cones of 0 and 1: fit_cones fits each class
  on its own, so they are the cones of 0 and 1 fitted on 0s and 1s.
  """
  x_train, y_train, x_test, y_test = ctx.x_train, ctx.y_train, ctx.x_test, ctx.y_test
  train = np.flatnonzero((y_train == 0) | (y_train == 1))
  test = np.flatnonzero((y_test == 0) | (y_test == 1))
  best = ctx.cones["classes"]
  rank = int(best.W.shape[-1])
  candidates = [("k-means init, 20 MU", conejax.make_cones(best.W[:2], best.mu_h,
                                                           classes=best.classes[:2]))]
  if ctx.size["ref_ranks"]:
    candidates.insert(0, ("reference (nndsvda, 200 MU)", conejax.fit_cones(
        x_train[train], y_train[train], rank, key=ctx.key, **REFERENCE)))
  rows = {}
  for name, cones in candidates:
    correct = conejax.predict(cones, x_test[test]) == y_test[test]
    rows[name] = dict(rank=rank, accuracy=float(np.mean(correct)), errors=int(np.sum(~correct)),
                      n_test=len(test), n_train=len(train))
  ctx.report["zero_vs_one"] = rows


def ten_digits(ctx):
  """Nearest-cone accuracy against rank, beside baselines trained on the same images.

  Fit times include compilation; prediction is timed on its second call (same shapes).
  """
  x_train, y_train, x_test, y_test = ctx.x_train, ctx.y_train, ctx.x_test, ctx.y_test
  rows = []
  for label, config, ranks in (("cones, reference (nndsvda, 200 MU)", REFERENCE,
                                ctx.size["ref_ranks"]),
                               ("cones, k-means init, 20 MU", BEST, ctx.size["ranks"])):
    for rank in ranks:
      cones, fit_s = timed(lambda: conejax.fit_cones(x_train, y_train, rank, key=ctx.key,
                                                     **config))
      predicted, predict_s = warm_timed(lambda: conejax.predict(cones, x_test))
      rows.append(dict(model=f"{label}, rank {rank}", accuracy=float(np.mean(predicted == y_test)),
                       fit_seconds=fit_s, predict_seconds=predict_s))
      if config is BEST:
        ctx.cones[rank] = cones
        ctx.cones["classes"] = cones  # the largest rank of the best configuration
  peers = [] if ctx.mode == "smoke" else [("logistic regression (JAX, optax)",
            lambda: baselines.fit_logistic(x_train, y_train, key=ctx.key))]
  if ctx.mode == "full":
    peers.append(("PCA nearest affine subspace, k = 32",
                  lambda: baselines.fit_pca_subspaces(x_train, y_train, k=32)))
  if ctx.size["mlp"]:
    peers.insert(1, ("MLP, 256 hidden units (JAX, optax)",
                     lambda: baselines.fit_mlp(x_train, y_train, key=ctx.key)))
  for label, fit in peers:
    predict, fit_s = timed(fit)
    predicted, predict_s = timed(lambda: predict(x_test))
    rows.append(dict(model=label, accuracy=float(np.mean(predicted == y_test)),
                     fit_seconds=fit_s, predict_seconds=predict_s))
  ctx.report["ten_digits"] = rows
  projections(ctx)


def projections(ctx):
  """Twelve test digits, their projection on the all-digit cone and on their class cone."""
  x_test, y_test = ctx.x_test, ctx.y_test
  picks = np.array([np.flatnonzero(y_test == c)[0] for c in range(10)] +
                   [np.flatnonzero(y_test == 8)[1], np.flatnonzero(y_test == 3)[1]])
  x = x_test[picks]
  on_all = np.asarray(conejax.project(ctx.cones["all"], x))[:, 0]
  own = np.asarray(conejax.project(ctx.cones["classes"], x))
  on_class = own[np.arange(len(picks)), y_test[picks]]
  titles = ["test"] * 12 + ["all-digit cone"] * 12 + ["own-class cone"] * 12
  image_grid(np.concatenate([x, on_all, on_class]), 3, 12, ctx.out / "projections.png", titles)


def uses(ctx):
  """The same class cones, reused: anomaly scores, k-cones clustering, compression, features.

  Anomaly: the cones of the nine other digits (fit_cones fits each class on its own, so they
  are the class cones less digit 0's) score the held-out digit 0.
  """
  cones, x_test, y_test = ctx.cones["classes"], ctx.x_test, ctx.y_test
  held_out = 0
  others = conejax.make_cones(cones.W[1:], cones.mu_h, classes=cones.classes[1:])
  scores = np.asarray(conejax.anomaly_score(others, x_test))
  rank = 8
  (labels, _), seconds = timed(lambda: conejax.kcones(
      x_test, 10, rank, key=ctx.key, n_iter=ctx.size["kcones_iter"], max_iter=50, method="mu"))
  purity = sum(np.bincount(y_test[labels == k]).max() for k in np.unique(labels)) / len(y_test)
  digits = x_test[y_test == 3]
  compressed = {}
  for n in [n for n in ctx.size["compress"] if n <= cones.W.shape[-1]]:
    _, error = conejax.compress(cones.W[3], digits, n)
    compressed[n] = float(np.median(np.asarray(error)))
  features = np.asarray(conejax.features(cones, x_test))
  ctx.report["uses"] = dict(
      anomaly=dict(held_out=held_out, roc_auc=float(roc_auc_score(y_test == held_out, scores))),
      clustering=dict(rank=rank, n_iter=ctx.size["kcones_iter"], seconds=seconds,
                      ari=float(adjusted_rand_score(y_test, labels)), purity=float(purity)),
      compression=dict(digit=3, median_rel_error=compressed),
      features=dict(shape=list(features.shape),
                    nonzero_fraction=float(np.mean(features > 0))))


def inverse(ctx):
  """experiments/inverse_problems.py on a subset of its tasks (all with --full).

  Smoke: one deblurring by ``reconstruct`` and one separation by ``separate`` on the class
  cones instead (the experiment's tuning loops compile too many shapes for a minute).
  """
  if ctx.mode == "smoke":
    from conejax import operators
    cones, x = ctx.cones["classes"], ctx.x_test
    A = operators.blur(np.full((5, 5), 1 / 25, np.float32), (28, 28))
    out = conejax.reconstruct(cones, operators.apply(A, x), A, mu_h=0.0, select="union")
    parts = conejax.separate(cones, x[:10] + x[10:20])
    psnr = inverse_problems.psnr(np.asarray(out.u, np.float64), np.asarray(x, np.float64))
    ctx.report["inverse"] = dict(n_test=len(x), n_val=0, separation=[], folder=".", rows=[
        dict(task="deblurring", level="5x5 box", method="conejax union (l2)", parameter=0.0,
             psnr=float(np.mean(psnr)), ssim=float("nan"), seconds=0.0)],
        separation_shape=list(parts.shape))
    return
  n_test, n_val = ctx.size["inverse_n"]
  tasks = ctx.size["inverse_tasks"]
  with contextlib.redirect_stdout(sys.stderr):
    rows, sep_rows = inverse_problems.run(ctx.data_path, ctx.sub_out, n_test=n_test, n_val=n_val,
                                          tasks=None if tasks is None else list(tasks),
                                          quick=ctx.mode != "full")
  ctx.report["inverse"] = dict(n_test=n_test, n_val=n_val, rows=rows, separation=sep_rows,
                               folder=str(ctx.sub_out.relative_to(ctx.out)))


def tuning(ctx):
  """Fine-tuning the class cones with optax: a short cross-entropy run (quick, smoke), or
  experiments/finetune.py (--full: discriminative against the MLP, and adversarial)."""
  if ctx.mode == "full":
    with contextlib.redirect_stdout(sys.stderr):
      finetune.run(ctx.data_path, ctx.sub_out)
    result = json.loads((ctx.sub_out / "finetune.json").read_text())
    ctx.report["finetune"] = dict(ten_digits=result["ten_digits"], separation=result["separation"],
                                  folder=str(ctx.sub_out.relative_to(ctx.out)))
    return
  import optax
  rank = ctx.size["ranks"][0]
  cones, steps = ctx.cones[rank], ctx.size["finetune_steps"]
  n_val = len(ctx.y_train) // 12
  order = np.random.default_rng(0).permutation(len(ctx.y_train))
  val, train = order[:n_val], order[n_val:]
  tuned = conejax.finetune(cones, ctx.x_train[train], ctx.y_train[train],
                           optax.adam(optax.cosine_decay_schedule(3e-3, steps)), steps=steps,
                           key=ctx.key, validation=(ctx.x_train[val], ctx.y_train[val]),
                           eval_every=max(steps // 3, 1), progress=False)
  score = lambda c: conejax.score(c, ctx.x_test, ctx.y_test)
  ctx.report["finetune"] = dict(rank=rank, steps=steps, best_step=int(tuned.best_step),
                                seconds=float(tuned.seconds), accuracy_before=score(cones),
                                accuracy_after=score(tuned.cones))


def restoration(ctx):
  """Patch cones trained on one natural image denoise another (scikit-image's bundled ones)."""
  from skimage import data as images
  from skimage.metrics import peak_signal_noise_ratio
  size = ctx.size["restore_size"]

  def gray(name):
    x = getattr(images, name)()
    x = x.mean(-1) if x.ndim == 3 else x
    x = np.asarray(x, np.float64) / 255.0
    top, left = (x.shape[0] - size) // 2, (x.shape[1] - size) // 2
    return x[top:top + size, left:left + size]

  train, truth = gray("astronaut"), gray("camera")
  cones, fit_s = timed(lambda: conejax.fit_patch_cones(
      [train], 8, key=ctx.key, rank=ctx.size["restore_rank"], n_cones=ctx.size["restore_cones"],
      n_train=4000))
  sigma = 0.1
  noisy = truth + sigma * np.random.default_rng(0).standard_normal(truth.shape)
  v = np.asarray(noisy.ravel(), np.float32)
  run = lambda: conejax.restore(cones, v, image_shape=truth.shape,
                                sigma=sigma, n_iter=1, stride=1, tau=2.5, reweight=1)
  restored, seconds = timed(run)
  restored = np.clip(np.asarray(restored, np.float64).reshape(truth.shape), 0, 1)
  psnr = lambda x: float(peak_signal_noise_ratio(truth, np.clip(x, 0, 1), data_range=1.0))
  fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.7))
  for ax, image, title in zip(axes, (noisy, restored, truth),
                              (f"noisy {psnr(noisy):.1f} dB", f"restored {psnr(restored):.1f} dB",
                               "truth")):
    ax.imshow(np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(ctx.out / "restoration.png", dpi=110)
  plt.close(fig)
  ctx.report["restoration"] = dict(size=size, sigma=sigma, rank=ctx.size["restore_rank"],
                                   n_cones=ctx.size["restore_cones"], fit_seconds=fit_s,
                                   seconds=seconds,
                                   psnr_noisy=psnr(noisy), psnr_restored=psnr(restored))


SHARDED_CHILD = """
import json, sys, jax, numpy as np, conejax
from conejax.data import load_mnist
x, y, xt, yt = load_mnist(sys.argv[1] if sys.argv[1] != "-" else None)
U = x[:2000]
key = jax.random.key(0)
mesh = conejax.make_mesh()
sharded = conejax.nmf_sharded(U, 16, key=key, mesh=mesh, method="hals", max_iter=20, tol=0)
single = conejax.nmf(U, 16, key=key, method="hals", max_iter=20, tol=0)
cones = conejax.fit_cones(x[:3000], y[:3000], 8, key=key)
agree = np.mean(conejax.predict_sharded(cones, xt, mesh) == conejax.predict(cones, xt))
diff = float(np.max(np.abs(np.asarray(sharded.W) - np.asarray(single.W))) /
             float(np.max(np.abs(np.asarray(single.W)))))
print(json.dumps(dict(devices=len(jax.devices()), mesh=dict(mesh.shape), w_rel_diff=diff,
                      predictions_agree=float(agree))))
"""


def scale_out(ctx):
  """nmf_sharded and predict_sharded on a mesh of host devices, against one device.

  Runs in a subprocess that fakes ``sharding_devices`` CPU devices (XLA_FLAGS), since JAX's
  device count is fixed when it starts; 0 uses this process's own devices.
  """
  n = ctx.size["sharding_devices"]
  data = ctx.data_path or "-"
  if n == 0:
    namespace = {}
    argv, sys.argv = sys.argv, ["-", data]
    try:
      with contextlib.redirect_stdout(sys.stderr):
        exec(compile(SHARDED_CHILD.replace("print(", "result = ("), "sharded", "exec"),
             namespace)
    finally:
      sys.argv = argv
    result = json.loads(namespace["result"])
  else:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
               JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", SHARDED_CHILD, data], env=env, check=True,
                          capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
  ctx.report["scale_out"] = result


def streaming(ctx):
  """nmf_minibatch over chunks of the training set against batch HALS on all of it."""
  U = ctx.x_train
  chunk = ctx.size["stream_chunk"]
  chunks = lambda: (U[i:i + chunk] for i in range(0, len(U), chunk))
  stream, stream_s = timed(lambda: conejax.nmf_minibatch(
      chunks, 16, key=ctx.key, n_epochs=ctx.size["stream_epochs"], progress=False))
  batch, batch_s = timed(lambda: conejax.nmf(U, 16, key=ctx.key, method="hals"))
  error = lambda W: float(np.linalg.norm(U - np.asarray(conejax.nnls(W, U).h) @ np.asarray(W).T)
                          / np.linalg.norm(U))
  ctx.report["streaming"] = dict(rank=16, chunk=chunk, epochs=ctx.size["stream_epochs"],
                                 n=len(U), stream_seconds=stream_s, batch_seconds=batch_s,
                                 stream_rel_error=error(stream.W), batch_rel_error=error(batch.W))


def estimators(ctx):
  """conejax.sklearn: ConeClassifier alone and in a Pipeline (--full: ConeNMF, cross-validation).

  The classifier has the ten-digit section's rank-16 settings, so its score must equal the
  functional API's (and it reuses those compiled programs).
  """
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import cross_val_score
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import MaxAbsScaler
  from conejax.sklearn import ConeClassifier, ConeNMF
  X, y, rank = ctx.x_train, ctx.y_train, ctx.size["ranks"][0]
  make = lambda: ConeClassifier(rank, random_state=0, **BEST)
  clf, fit_s = timed(lambda: make().fit(X, y))
  pipe = make_pipeline(MaxAbsScaler(), make()).fit(X, y)
  ctx.report["sklearn"] = dict(
      n=len(y), classifier=f"ConeClassifier({rank}, init='kmeans', max_iter=20)",
      accuracy=float(clf.score(ctx.x_test, ctx.y_test)),
      functional_accuracy=float(conejax.score(ctx.cones[rank], ctx.x_test, ctx.y_test)),
      fit_seconds=fit_s, pipeline="MaxAbsScaler -> ConeClassifier",
      pipeline_accuracy=float(pipe.score(ctx.x_test, ctx.y_test)))
  if ctx.size["sklearn_cv"]:
    nmf_pipe = make_pipeline(ConeNMF(32, random_state=0), LogisticRegression(max_iter=300))
    scores = cross_val_score(ConeClassifier(16, random_state=0), X, y, cv=3)
    ctx.report["sklearn"].update(
        cv_accuracy=[float(s) for s in scores],
        nmf_pipeline_accuracy=float(nmf_pipe.fit(X, y).score(ctx.x_test, ctx.y_test)))


def reuse(ctx):
  """experiments/reuse.py --quick (operator-aware classification, transfer, calibration)."""
  args = [sys.executable, str(HERE / "reuse.py"), "--quick", "--out", str(ctx.sub_out)]
  subprocess.run(args, capture_output=True, text=True, check=True, cwd=HERE.parent)
  result = json.loads((ctx.sub_out / "reuse_quick.json").read_text())
  ctx.report["reuse"] = dict(command="python experiments/reuse.py --quick",
                             table=(ctx.sub_out / "reuse_quick.md").read_text(),
                             targets=result.get("targets"))


SECTIONS = [("sparse NMF bases", bases), ("sparse NNLS solvers", nnls_solvers),
            ("cones: ten digits", ten_digits), ("cones: 0 vs 1", zero_versus_one),
            ("anomaly, clustering, compression", uses), ("inverse problems", inverse),
            ("fine-tuning", tuning), ("restoration of an image", restoration),
            ("scale-out", scale_out), ("streaming NMF", streaming),
            ("scikit-learn estimators", estimators)]
REUSE = ("reuse: classification under operators", reuse)


# ----------------------------------------------------------------------------- main

def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default=None, help="full mnist.npz (default: embedded subset)")
  group = parser.add_mutually_exclusive_group()
  group.add_argument("--smoke", action="store_true", help="tiny sizes (CI's check)")
  group.add_argument("--full", action="store_true", help="the heavy settings (all ranks, all "
                     "inverse tasks, every separation pair, full fine-tuning)")
  parser.add_argument("--out", default=None,
                      help="output folder (default: results; results/smoke with --smoke)")
  parser.add_argument("--no_reuse", action="store_true",
                      help="leave out experiments/reuse.py --quick")
  parser.add_argument("--cache", default=str(CACHE),
                      help="JAX's persistent compilation cache ('' for none; default %(default)s)")
  args = parser.parse_args(argv)
  if args.cache:  # most of a run's CPU time is XLA compiling: later runs reuse the programs
    os.environ["JAX_COMPILATION_CACHE_DIR"] = args.cache  # the subprocesses too
    jax.config.update("jax_compilation_cache_dir", args.cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  cached = len(list(pathlib.Path(args.cache).glob("*"))) if args.cache else 0
  mode = "smoke" if args.smoke else "full" if args.full else "quick"
  out = pathlib.Path(args.out or ("results/smoke" if mode == "smoke" else "results"))
  out.mkdir(parents=True, exist_ok=True)
  start, cpu_start = time.perf_counter(), cpu_seconds()
  x_train, y_train, x_test, y_test = load_mnist(args.data)
  size = MODES[mode]
  train, test = per_class(y_train, size["n_train"], None), per_class(y_test, size["n_test"], None)
  ctx = Context((x_train[train], y_train[train], x_test[test], y_test[test]), mode, out,
                jax.random.key(0))
  ctx.data_path = args.data
  if mode == "smoke":  # the sub-experiments load their own data: give them the tiny sizes
    ctx.data_path = str(_tiny_npz(ctx))
  ctx.sub_out.mkdir(parents=True, exist_ok=True)
  sections = list(SECTIONS)
  if (HERE / "reuse.py").exists() and not args.no_reuse and mode != "smoke":
    sections.append(REUSE)
  timing = {}
  with tqdm(sections, desc="main job", unit="section") as bar:
    for name, section in bar:
      bar.set_description(name)
      wall, cpu = time.perf_counter(), cpu_seconds()
      section(ctx)
      timing[name] = (time.perf_counter() - wall, cpu_seconds() - cpu)
  report = ctx.report
  report.update(
      command="python experiments/reproduce.py" + {"smoke": " --smoke", "full": " --full",
                                                   "quick": ""}[mode]
      + (f" --data {args.data}" if args.data else ""),
      mode=mode, data=args.data or "embedded subset", n_train=len(ctx.y_train),
      compilation_cache=args.cache or None, cache_entries_at_start=cached,
      n_test=len(ctx.y_test), device=str(jax.devices()[0]), cpus=os.cpu_count(),
      seconds=time.perf_counter() - start, cpu_seconds=cpu_seconds() - cpu_start,
      timing=timing, date=time.strftime("%Y-%m-%d"))
  write_report(report, out)
  (out / "reproduce.json").write_text(json.dumps(report, indent=1, default=_plain))
  print((out / "REPORT.md").read_text())
  return report


def _plain(value):
  """JSON for numpy scalars and arrays."""
  return value.tolist() if hasattr(value, "tolist") else str(value)


def _tiny_npz(ctx):
  """The smoke run's data as an mnist.npz, for the sub-experiments that load their own."""
  path = ctx.sub_out / "tiny_mnist.npz"
  path.parent.mkdir(parents=True, exist_ok=True)
  to_uint8 = lambda x: np.round(np.asarray(x) * 255).astype(np.uint8).reshape(-1, 28, 28)
  np.savez(path, x_train=to_uint8(ctx.x_train), y_train=ctx.y_train, x_test=to_uint8(ctx.x_test),
           y_test=ctx.y_test)
  return path


if __name__ == "__main__":
  main()
