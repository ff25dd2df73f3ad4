"""Reuse across tasks: degraded MNIST, transfer to load_digits, calibration and uncertainty.

    python experiments/reuse.py --quick    # embedded MNIST subset, small sizes (main job)
    python experiments/reuse.py            # full: ../shared/data/mnist.npz (--data PATH)
    python experiments/reuse.py --tables   # re-render results/reuse.md and docs/reuse.md
    python experiments/reuse.py --only digits          # rerun the load_digits part alone
    python experiments/reuse.py --only digits --tune   # its fine-tuning settings' grid
    python experiments/reuse.py --only uncertainty     # rerun the posterior part alone

Cones trained once on clean MNIST serve tasks they were never trained for (issue 17):

1. degraded MNIST (experiments/reuse_tasks.py: 2x / 4x pooling, 50% / 80% missing pixels
   with one mask per image, the 5x5 box blur + noise 0.01, Gaussian sensing k = 100 /
   200): accuracy of the clean cones through A (``conejax.predict(cones, V, A=A)``)
   against a clean-trained MLP and logistic regression (scikit-learn) on the naive
   inverse (bicubic upsampling, zero fill, the blurred image, minimum-norm least squares)
   and against cones retrained on degraded data;
2. transfer to scikit-learn's 8 x 8 ``load_digits`` through ``operators.resize`` of the
   central 20 x 20 MNIST box (experiments/reuse_digits.py): zero-shot, few-shot (1..20
   labelled digits per class over several draws: the transferred cones with the labelled
   digits added as atoms, refined by warm-started NMF on them, or fine-tuned through A by
   ``conejax.finetune(..., A=A)``, against cones from scratch, logistic regression and an
   SVC) and all training digits;
3. calibration: ``conejax.calibrate`` on a validation split, expected calibration error
   (15 bins) and a reliability diagram beside the MLP's;
4. uncertainty: ``reconstruct(..., select="posterior", variance="total")`` (and the mixture
   spread alone, ``variance="mixture"``) on 80% missing pixels and 4x
   super-resolution, with the temperature calibrated through the operator; the error of
   the 10% of pixels with the largest predicted standard deviation against the 50% with the
   smallest, and the Spearman correlation of each image's predicted variance with its error.

scikit-learn runs in a subprocess whose environment drops OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE (as experiments/bench_nnls.py does). Writes results/reuse.{json,md} and
PNGs (results/reuse_quick.* with --quick) and the tables of docs/reuse.md; ``--only digits``
replaces the digits part (and the targets) of results/reuse.json and re-renders the tables,
``--tune`` writes results/reuse_digits_tuning.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import numpy as np
from tqdm import tqdm

import conejax
from conejax.data import load_mnist

import peers  # noqa: E402  (experiments/ is the script's own folder)
import reuse_digits  # noqa: E402
from reuse_tasks import (NAIVE, SHAPE, TASKS, degrade, naive_inverse,  # noqa: E402
                         options)

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
# Every batch that goes through the cones has n_test rows where it can (validation splits
# too): one compiled program per operator, since compiling the exact solver dominates the
# quick form's time.
SIZES = {
    "full": dict(n_train=10_000, n_val=1000, n_test=1000, rank=64, n_retrain=5000,
                 draws=10, shots=(1, 2, 5, 10, 20), mlp_iter=200,
                 tasks=("pool2", "pool4", "missing50", "missing80", "blur", "sensing100",
                        "sensing200"), retrain=True, uncertainty=("missing80", "pool4"),
                 digits_methods=("exemplars", "warm_nmf", "finetune", "scratch"),
                 all_digits=True,
                 calibration_on_all_test=True),
    "quick": dict(n_train=2000, n_val=200, n_test=200, rank=16, n_retrain=0,
                  draws=3, shots=(5,), mlp_iter=20, tasks=("pool4",), retrain=False,
                  uncertainty=("pool4",), digits_methods=("exemplars",),
                  all_digits=False, calibration_on_all_test=False),
}
def timed(fn):
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start


# ----------------------------------------------------------------------------- scikit-learn


def peer_main(in_path, out_path):
  """Subprocess side: the MNIST MLP and logistic regression, and the digits' LR and SVC."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.neural_network import MLPClassifier
  import warnings
  warnings.filterwarnings("ignore")
  out = {}
  with np.load(in_path, allow_pickle=False) as job:
    mnist_peers = [("mlp", lambda: MLPClassifier((256,), max_iter=int(job["mlp_iter"]),
                                                 random_state=0)),
                   ("logistic", lambda: LogisticRegression(max_iter=1000))]
    if "x_train" not in job.files:   # --only digits
      mnist_peers = []
    x, y = (job["x_train"], job["y_train"]) if mnist_peers else (None, None)
    for name, make in mnist_peers:
      start = time.perf_counter()
      model = make().fit(x, y)
      out[f"{name}_seconds"] = time.perf_counter() - start
      for key in job.files:
        if key.startswith("test_"):
          out[f"{name}_pred_{key[5:]}"] = model.predict(job[key])
      out[f"{name}_proba_calibration"] = model.predict_proba(job["calibration_test"])
    reuse_digits.peer_part(job, out)
  out["cpu_seconds"] = time.process_time()
  np.savez(out_path, **out)


def run_peers(arrays):
  return peers.run(__file__, arrays)


# ----------------------------------------------------------------------------- measures


def ece(proba, y, bins=15):
  """Expected calibration error of the top probability, equal-width bins, and the diagram."""
  confidence, correct = proba.max(1), (proba.argmax(1) == y)
  edges = np.linspace(0, 1, bins + 1)
  which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
  total, curve = 0.0, []
  for b in range(bins):
    sel = which == b
    if sel.any():
      total += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
      curve.append((float(confidence[sel].mean()), float(correct[sel].mean()), int(sel.sum())))
  return float(total), curve


def nll(proba, y):
  return float(-np.mean(np.log(np.maximum(proba[np.arange(len(y)), y], 1e-300))))


def uncertainty_metrics(u, std, truth):
  """Pixels: MAE of the top 10% by predicted std over the bottom 50%; images: Spearman."""
  from scipy.stats import spearmanr
  error = np.abs(u - truth).reshape(-1)
  order = np.argsort(std.reshape(-1), kind="stable")
  n = order.size
  low, high = error[order[: n // 2]].mean(), error[order[-n // 10:]].mean()
  rho = spearmanr((std**2).sum(1), ((u - truth) ** 2).sum(1)).statistic
  return dict(mae_top10_std=float(high), mae_bottom50_std=float(low),
              ratio=float(high / max(low, 1e-30)), spearman=float(rho))


# ----------------------------------------------------------------------------- parts


def degraded_mnist(ctx, cones, data, rng, measure=True):
  """Accuracy of the clean cones through A, and of cones retrained on degraded data.

  ``measure=False`` only replays the degradations (the same random draws) for the naive
  inverses, when resuming a run whose measurements are checkpointed.
  """
  size, rows = ctx["size"], []
  x_train, y_train, x_test, y_test = data
  naive = {}
  for task in tqdm(size["tasks"], desc="degraded MNIST", leave=False):
    obs = degrade(task, x_test, rng)
    if not measure:
      naive[task] = naive_inverse(task, obs)
      if size["retrain"] and TASKS[task][1] != "sensing":
        degrade(task, x_train[:size["n_retrain"]], rng)
      continue
    predicted, seconds = timed(lambda: conejax.predict(cones, obs["V"], **options(obs)))
    row = dict(task=task, label=TASKS[task][0], naive=NAIVE[TASKS[task][1]],
               cones_through_A=float(np.mean(predicted == y_test)), cones_seconds=seconds)
    naive[task] = naive_inverse(task, obs)
    if size["retrain"] and TASKS[task][1] != "sensing":
      n = size["n_retrain"]
      train_obs = degrade(task, x_train[:n], rng)
      rank = min(size["rank"], obs["V"].shape[1])       # k-means atoms: at most k of them
      retrained, fit_s = timed(lambda: conejax.fit_cones(
          np.maximum(train_obs["V"], 0), y_train[:n], rank, key=jax.random.key(1)))
      V = np.maximum(obs["V"], 0)
      row.update(retrained_cones=float(np.mean(conejax.predict(retrained, V) == y_test)),
                 retrained_seconds=fit_s, retrained_n_train=n, retrained_rank=rank)
    rows.append(row)
  return rows, naive


def calibration(cones, x_val, y_val, x_test, y_test):
  T, seconds = timed(lambda: conejax.calibrate(cones, x_val, y_val))
  out = dict(temperature=float(T), seconds=seconds)
  for name, t in [("cones calibrated", T), ("cones T=1", 1.0)]:
    p = np.asarray(conejax.predict_proba(cones, x_test, temperature=t), np.float64)
    e, curve = ece(p, y_test)
    out[name] = dict(ece=e, nll=nll(p, y_test), accuracy=float(np.mean(p.argmax(1) == y_test)),
                     curve=curve)
  return out


def uncertainty(ctx, cones, data, rng):
  from scipy.stats import spearmanr
  x_train, y_train, x_test, y_test = data
  size, rows, maps = ctx["size"], [], {}
  n = len(x_test)
  val, y_val = x_train[-size["n_val"]:], y_train[-size["n_val"]:]
  for task in tqdm(size["uncertainty"], desc="uncertainty", leave=False):
    obs_val, obs = degrade(task, val, rng), degrade(task, x_test, rng)
    test = x_test
    D = np.asarray(conejax.distance(cones, obs_val["V"], **options(obs_val)))
    failed = np.flatnonzero(~np.all(np.isfinite(D), 1))
    if failed.size:   # reported, and left out of the validation split: never filled in
      np.savez(ROOT / "results" / f"reuse_nan_{task}.npz", V=obs_val["V"][failed],
               keep=obs_val.get("keep", np.zeros(0))[failed] if "keep" in obs_val else 0)
      print(f"{task}: {failed.size} validation distances are NaN (saved); calibrating on the "
            "rest", flush=True)
    ok = np.setdiff1d(np.arange(len(D)), failed)
    sub = dict(obs_val, V=obs_val["V"][ok],
               A=jax.tree.map(lambda a: a[ok], obs_val["A"]) if obs_val["per_sample"]
               else obs_val["A"])
    T = conejax.calibrate(cones, sub["V"], y_val[ok], **options(sub))
    posterior = lambda variance: conejax.reconstruct(
        cones, obs["V"], obs["A"], per_sample_operator=obs["per_sample"], select="posterior",
        temperature=T, variance=variance)
    out, seconds = timed(lambda: posterior("total"))
    spread, seconds_mixture = timed(lambda: posterior("mixture"))
    u, std = np.asarray(out.u), np.asarray(out.std)
    mixture = {f"{k}_mixture": v
               for k, v in uncertainty_metrics(u, np.asarray(spread.std), test).items()}
    rows.append(dict(task=task, label=TASKS[task][0], temperature=float(T), seconds=seconds,
                     seconds_mixture=seconds_mixture,
                     nan_validation_distances=int(failed.size),
                     nan_test_estimates=int(np.sum(~np.all(np.isfinite(np.asarray(out.u)), 1))),
                     n=n, psnr=float(np.mean(10 * np.log10(1 / np.maximum(
                         np.mean((u - test) ** 2, 1), 1e-12)))),
                     mean_std=float(std.mean()), rmse=float(np.sqrt(np.mean((u - test) ** 2))),
                     **uncertainty_metrics(u, std, test), **mixture,
                     # diagnostic: the data misfit of the most probable cone, known at test
                     # time, against each image's true error
                     spearman_misfit=float(spearmanr(
                         np.min(np.asarray(out.misfit), 1),
                         ((u - test) ** 2).sum(1)).statistic)))
    maps[task] = (test[:6], naive_inverse(task, obs)[:6], u[:6], std[:6])
  return rows, maps


# ----------------------------------------------------------------------------- figures


def figures(result, maps, prefix):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cal = result["calibration"]
  fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
  for ax, name in zip(axes, ["cones T=1", "cones calibrated", "mlp"]):
    curve = np.array(cal[name]["curve"])
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.bar(curve[:, 0], curve[:, 1], width=1 / 15, alpha=0.6, edgecolor="k")
    ax.set(title=f"{name}: ECE {100 * cal[name]['ece']:.2f}%", xlabel="confidence",
           ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
  fig.tight_layout()
  fig.savefig(f"{prefix}_reliability.png", dpi=110)
  plt.close(fig)
  for task, (truth, naive, u, std) in maps.items():
    fig, axes = plt.subplots(5, 6, figsize=(7, 6))
    for j in range(6):
      for i, (img, title) in enumerate([(truth, "truth"), (naive, "observed"), (u, "mean"),
                                        (std, "std"), (np.abs(u - truth), "|error|")]):
        axes[i, j].imshow(img[j].reshape(SHAPE), cmap="gray" if i < 3 else "magma")
        axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
        if j == 0:
          axes[i, j].set_ylabel(title)
    fig.suptitle(f"posterior reconstruction: {TASKS[task][0]}")
    fig.tight_layout()
    fig.savefig(f"{prefix}_uncertainty_{task}.png", dpi=110)
    plt.close(fig)
  fewshot_figure(result, prefix)


def fewshot_figure(result, prefix):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  shots = [r for r in result["digits"]["summary"] if r["shots"] not in (0, "all")]
  if shots:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method in sorted({r["method"] for r in shots}):
      rs = sorted((r for r in shots if r["method"] == method), key=lambda r: r["shots"])
      ax.errorbar([r["shots"] for r in rs], [r["mean"] for r in rs],
                  yerr=[r["std"] for r in rs], label=method, capsize=3, marker="o")
    ax.set(xscale="log", xlabel="labelled digits per class", ylabel="test accuracy",
           title="load_digits few-shot")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{prefix}_fewshot.png", dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- tables


def targets(result):
  """The issue's four targets as measured: list of dict(target, value, met)."""
  rows = {r["task"]: r for r in result["degraded"]}
  clean, out = result["clean_accuracy"]["cones"], []
  for task in ("pool2", "missing50", "blur"):
    if task in rows:
      loss = clean - rows[task]["cones_through_A"]
      out.append(dict(target=f"{TASKS[task][0]}: cones through A lose <= 3 points",
                      value=f"{100 * loss:.1f} points", met=bool(loss <= 0.03)))
  for task in ("pool4", "missing80"):
    if task in rows:
      gain = rows[task]["cones_through_A"] - rows[task]["mlp_naive"]
      out.append(dict(target=f"{TASKS[task][0]}: cones through A beat the MLP on the naive "
                             "inverse by >= 10 points", value=f"{100 * gain:+.1f} points",
                      met=bool(gain >= 0.10)))
  five = {r["method"]: r["mean"] for r in result["digits"]["summary"] if r["shots"] == 5}
  if five:
    best_transfer = max(v for k, v in five.items() if k.startswith("transfer"))
    margin = best_transfer - max(five.get(k, 0) for k in ("cones from scratch", "logistic",
                                                           "svc"))
    out.append(dict(target="digits, 5 per class: transferred cones beat scratch cones, LR and "
                           "SVC by >= 5 points", value=f"{100 * margin:+.1f} points",
                    met=bool(margin >= 0.05)))
  cal = result["calibration"]
  e, e_mlp = cal["cones calibrated"]["ece"], cal["mlp"]["ece"]
  out.append(dict(target="calibrated cones: ECE <= 1.5% and <= the MLP's",
                  value=f"{100 * e:.2f}% (MLP {100 * e_mlp:.2f}%)",
                  met=bool(e <= 0.015 and e <= e_mlp)))
  for r in result["uncertainty"]:
    out.append(dict(target=f"{r['label']}: top-10% std pixels carry >= 3x the MAE of the "
                           "bottom 50%; Spearman(variance, error) >= 0.5 (variance='total')",
                    value=f"{r['ratio']:.1f}x, rho {r['spearman']:.2f}",
                    met=bool(r["ratio"] >= 3 and r["spearman"] >= 0.5)))
  return out


def markdown(result):
  pct = lambda x: "" if x is None else f"{100 * x:.1f}"
  c = result["clean_accuracy"]
  lines = [f"Mode `{result['mode']}`; cones: rank {result['config']['rank']} per class, "
           f"{result['config']['n_train']} MNIST training digits; "
           f"{result['config']['n_test']} test digits. Clean test accuracy: cones "
           f"{pct(c['cones'])}%, MLP {pct(c['mlp'])}%, logistic regression "
           f"{pct(c['logistic'])}%.", "",
           "| degradation | clean cones through A | MLP on naive inverse | logistic on naive "
           "inverse | naive inverse | cones retrained on degraded data |",
           "|---|---|---|---|---|---|"]
  for r in result["degraded"]:
    lines.append(f"| {r['label']} | {pct(r['cones_through_A'])} | {pct(r['mlp_naive'])} | "
                 f"{pct(r['logistic_naive'])} | {r['naive']} | "
                 f"{pct(r.get('retrained_cones')) or 'n/a'} |")
  lines += ["", "| load_digits method | labelled per class | accuracy (mean +- std over draws) | "
            "training seconds |", "|---|---|---|---|"]
  for r in result["digits"]["summary"]:
    lines.append(f"| {r['method']} | {r['shots']} | {pct(r['mean'])} +- {pct(r['std'])} | "
                 f"{r['seconds']:.3f} |")
  cal = result["calibration"]
  lines += ["", f"Calibration (temperature {cal['temperature']:.4g} fitted on "
            f"{result['config']['n_val']} validation digits; scored on {cal.get('n_test')} "
            "test digits):", "",
            "| model | ECE (15 bins) | NLL | accuracy |", "|---|---|---|---|"]
  for name in ("cones T=1", "cones calibrated", "mlp"):
    lines.append(f"| {name} | {100 * cal[name]['ece']:.2f}% | {cal[name]['nll']:.3f} | "
                 f"{pct(cal[name]['accuracy'])} |")
  lines += ["", "| posterior reconstruction | std | T (calibrated through A) | PSNR | "
            "MAE top-10% std | MAE bottom-50% std | ratio | Spearman(variance, error) | "
            "Spearman(misfit, error) | mean std / RMSE | seconds |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in result["uncertainty"]:
    misfit = r.get("spearman_misfit")
    for variance, suffix in (("total", ""), ("mixture", "_mixture")):
      if f"ratio{suffix}" not in r:
        continue
      scale = (f"{r['mean_std']:.3f} / {r['rmse']:.3f}" if variance == "total"
               and "mean_std" in r else "")
      seconds = r.get("seconds" if variance == "total" else "seconds_mixture")
      lines.append(f"| {r['label']} | {variance} | {r['temperature']:.4g} | {r['psnr']:.2f} | "
                   f"{r[f'mae_top10_std{suffix}']:.4f} | {r[f'mae_bottom50_std{suffix}']:.4f} | "
                   f"{r[f'ratio{suffix}']:.1f} | {r[f'spearman{suffix}']:.2f} | "
                   f"{'' if misfit is None else f'{misfit:.2f}'} | {scale} | "
                   f"{'' if seconds is None else f'{seconds:.2f}'} |")
  if result["mode"] == "quick":
    lines += ["", "Quick sizes (rank-16 cones, 200 test digits, 3 draws): the issue's targets are "
              "judged on the full run, `python experiments/reuse.py` (results/reuse.md)."]
  lines += ["", "| target | measured | met |", "|---|---|---|"]
  lines += [f"| {t['target']} | {t['value']} | {'yes' if t['met'] else 'no'} |"
            for t in result["targets"]]
  return "\n".join(lines) + "\n"


def write_docs(result, path=ROOT / "docs" / "reuse.md"):
  """Replaces the generated block of docs/reuse.md with the tables of ``result``."""
  if not path.exists():
    return
  start, end = "<!-- reuse-tables: start -->", "<!-- reuse-tables: end -->"
  text = path.read_text()
  if start in text and end in text:
    head, rest = text.split(start, 1)
    path.write_text(head + start + "\n" + markdown(result) + end + rest.split(end, 1)[1])


# ----------------------------------------------------------------------------- main


def mnist(mode, data_path):
  """The splits of ``run`` and the cones fitted on its training digits: the generator (its
  later draws degrade the test digits), (train, test) data, validation, calibration test,
  cones and their fitting seconds."""
  size = SIZES[mode]
  x_train, y_train, x_test, y_test = load_mnist(None if mode == "quick" else data_path)
  rng = np.random.default_rng(0)
  perm = rng.permutation(len(y_train))
  val = perm[-size["n_val"]:]
  train = perm[: size["n_train"]]
  test = rng.permutation(len(y_test))[: size["n_test"]]
  x_val, y_val = x_train[val], y_train[val]
  # ECE of 15 bins is biased upwards on few samples: the full form scores the whole test set
  x_cal, y_cal = (x_test, y_test) if size["calibration_on_all_test"] else (x_test[test],
                                                                          y_test[test])
  x_train, y_train, x_test, y_test = x_train[train], y_train[train], x_test[test], y_test[test]
  cones, fit_s = timed(lambda: conejax.fit_cones(x_train, y_train, size["rank"],
                                                 key=jax.random.key(0)))
  return rng, (x_train, y_train, x_test, y_test), (x_val, y_val), (x_cal, y_cal), cones, fit_s


def run_digits(data_path, out_dir, tune=False):
  """The load_digits part alone, with the full form's MNIST cones: replaces ``digits`` and
  ``targets`` in out_dir/reuse.json and re-renders the tables (``tune``: the settings' grid,
  to out_dir/reuse_digits_tuning.json, instead)."""
  start = time.perf_counter()
  cones = mnist("full", data_path)[4]
  if tune:
    out = reuse_digits.tune(cones)
    (out_dir / "reuse_digits_tuning.json").write_text(json.dumps(out, indent=1))
    return print(reuse_digits.tune_summary(out))
  rows, peers, draws = reuse_digits.run(SIZES["full"], cones)
  peers_out = run_peers(peers)
  path = out_dir / "reuse.json"
  result = json.loads(path.read_text())
  result["digits"] = dict(rows=rows, summary=reuse_digits.summarise(rows, peers_out, draws),
                          seconds=time.perf_counter() - start)
  result["targets"] = targets(result)
  path.write_text(json.dumps(result, indent=1, default=str))
  (out_dir / "reuse.md").write_text(markdown(result))
  fewshot_figure(result, out_dir / "reuse")
  write_docs(result)
  print(markdown(result))
  print(f"digits part: {result['digits']['seconds']:.0f} s wall")


def run_uncertainty(data_path, out_dir):
  """The posterior-uncertainty part alone, with the full form's cones and the same random
  draws (the degradations before it are replayed, not measured): replaces ``uncertainty``
  and ``targets`` in out_dir/reuse.json, re-renders the tables and the uncertainty maps."""
  start = time.perf_counter()
  rng, data, (x_val, y_val), _, cones, _ = mnist("full", data_path)
  ctx = dict(size=SIZES["full"])
  degraded_mnist(ctx, cones, data, rng, measure=False)
  x_train, y_train, x_test, y_test = data
  rows, maps = uncertainty(ctx, cones, (np.concatenate([x_train, x_val]),
                                        np.concatenate([y_train, y_val]), x_test, y_test), rng)
  path = out_dir / "reuse.json"
  result = json.loads(path.read_text())
  result["uncertainty"] = rows
  result["uncertainty_seconds"] = time.perf_counter() - start
  result["targets"] = targets(result)
  path.write_text(json.dumps(result, indent=1, default=str))
  (out_dir / "reuse.md").write_text(markdown(result))
  figures(result, maps, out_dir / "reuse")
  write_docs(result)
  print(markdown(result))
  print(f"uncertainty part: {result['uncertainty_seconds']:.0f} s wall")


def run(mode, data_path, out_dir, resume=False):
  size = SIZES[mode]
  ctx = dict(size=size)
  start, cpu = time.perf_counter(), time.process_time()
  rng, data, (x_val, y_val), (x_cal, y_cal), cones, fit_s = mnist(mode, data_path)
  x_train, y_train, x_test, y_test = data
  result = dict(mode=mode, config=dict(size, n_train=len(y_train)), fit_seconds=fit_s)
  clean = float(conejax.score(cones, x_test, y_test))
  prefix = out_dir / ("reuse_quick" if mode == "quick" else "reuse")
  out_dir.mkdir(parents=True, exist_ok=True)

  def checkpoint(part, value):
    """Keeps each part's numbers on disk as it finishes (a crash keeps what was measured)."""
    result[part] = value
    jax.clear_caches()
    pathlib.Path(f"{prefix}.partial.json").write_text(json.dumps(result, indent=1, default=str))

  done = (json.loads(pathlib.Path(f"{prefix}.partial.json").read_text()) if resume else {})
  if resume:
    print(f"resuming from {prefix}.partial.json: {sorted(done)}")
  degraded, naive = degraded_mnist(ctx, cones, data, rng, measure="degraded" not in done)
  checkpoint("degraded", done.get("degraded", degraded))
  degraded = result["degraded"]
  digits_rows, peers, draws = reuse_digits.run(size, cones, measure="digits" not in done)
  checkpoint("digits", done.get("digits", dict(rows=digits_rows)))
  digits_rows = result["digits"]["rows"]
  if "calibration" not in done:
    done["calibration"] = calibration(cones, x_val, y_val, x_cal, y_cal)
    done["calibration"]["n_test"] = len(y_cal)
  checkpoint("calibration", done["calibration"])
  result["uncertainty"], maps = uncertainty(ctx, cones, (np.concatenate([x_train, x_val]),
                                                         np.concatenate([y_train, y_val]),
                                                         x_test, y_test), rng)
  peers.update(x_train=x_train, y_train=y_train, test_clean=x_test, mlp_iter=size["mlp_iter"],
               calibration_test=x_cal,
               **{f"test_{task}": v for task, v in naive.items()})
  peers_out = run_peers(peers)
  for r in degraded:
    for name in ("mlp", "logistic"):
      r[f"{name}_naive"] = float(np.mean(peers_out[f"{name}_pred_{r['task']}"] == y_test))
  result["degraded"] = degraded
  result["clean_accuracy"] = dict(
      cones=clean, **{name: float(np.mean(peers_out[f"{name}_pred_clean"] == y_test))
                      for name in ("mlp", "logistic")})
  result["peer_seconds"] = {name: float(peers_out[f"{name}_seconds"])
                            for name in ("mlp", "logistic")}
  p_mlp = peers_out["mlp_proba_calibration"]
  e, curve = ece(p_mlp, y_cal)
  result["calibration"]["mlp"] = dict(ece=e, nll=nll(p_mlp, y_cal), curve=curve,
                                      accuracy=float(np.mean(p_mlp.argmax(1) == y_cal)))
  result["digits"] = dict(rows=digits_rows,
                          summary=reuse_digits.summarise(digits_rows, peers_out, draws))
  result["targets"] = targets(result)
  result["seconds"] = time.perf_counter() - start
  result["cpu_seconds_main_process"] = time.process_time() - cpu
  result["cpu_seconds_peers"] = float(peers_out["cpu_seconds"])
  pathlib.Path(f"{prefix}.json").write_text(json.dumps(result, indent=1, default=str))
  table = markdown(result)
  pathlib.Path(f"{prefix}.md").write_text(table)
  figures(result, maps, prefix)
  if mode == "full":
    write_docs(result)
  print(table)
  print(f"total {result['seconds']:.1f} s wall, CPU {result['cpu_seconds_main_process']:.1f} s "
        f"(+ {result['cpu_seconds_peers']:.1f} s in the scikit-learn subprocess)")
  return result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="embedded subset, small sizes")
  parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "mnist.npz"))
  parser.add_argument("--out", default=str(ROOT / "results"))
  parser.add_argument("--tables", action="store_true",
                      help="re-render the markdown of the existing results/reuse.json")
  parser.add_argument("--resume", action="store_true",
                      help="keep the parts measured in <prefix>.partial.json, run the rest")
  parser.add_argument("--only", choices=("digits", "uncertainty"),
                      help="rerun only this part of the full form, into the existing JSON")
  parser.add_argument("--tune", action="store_true",
                      help="with --only digits: the fine-tuning settings' grid")
  parser.add_argument("--peer", nargs=2, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.peer:
    return peer_main(*args.peer)
  if args.only or args.tune:
    if (args.tune and args.only != "digits") or args.quick or args.resume:
      parser.error("--only reruns one part of the full form (no --quick, no --resume); "
                   "--tune goes with --only digits")
    if args.only == "uncertainty":
      return run_uncertainty(args.data, pathlib.Path(args.out))
    return run_digits(args.data, pathlib.Path(args.out), tune=args.tune)
  if args.tables:
    result = json.loads((pathlib.Path(args.out) / "reuse.json").read_text())
    (pathlib.Path(args.out) / "reuse.md").write_text(markdown(result))
    write_docs(result)
    return print(markdown(result))
  run("quick" if args.quick else "full", args.data, pathlib.Path(args.out), resume=args.resume)


if __name__ == "__main__":
  main()
