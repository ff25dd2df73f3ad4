"""The main job's report: OUT/REPORT.md from the numbers of experiments/reproduce.py."""

from __future__ import annotations


def write_report(report, out):
  """OUT/REPORT.md from the run's numbers (and the sub-experiments' tables)."""
  md = ReportWriter(report, out)
  (out / "REPORT.md").write_text(md.text())


class ReportWriter:
  def __init__(self, report, out):
    self.r, self.out, self.lines = report, out, []

  def add(self, *lines):
    self.lines += list(lines)

  def table(self, header, rows):
    self.add("| " + " | ".join(header) + " |", "|" + "---|" * len(header))
    self.add(*("| " + " | ".join(str(c) for c in row) + " |" for row in rows))
    self.add("")

  def text(self):
    r = self.r
    self.add("# Reproduction report", "",
             f"`{r['command']}`: {r['mode']} mode; data: {r['data']} ({r['n_train']} training and "
             f"{r['n_test']} test images); device {r['device']}; {r['seconds']:.0f} s wall, "
             f"{r['cpu_seconds']:.0f} s CPU ({r['cpus']} CPUs); JAX's compilation cache "
             + ("off" if not r["compilation_cache"] else
                f"held {r['cache_entries_at_start']} programs at the start (0: a cold run)")
             + ".", "")
    b = r["bases"]
    self.add("## Sparse NMF bases", "",
             f"Rank 64, {b['iterations']} multiplicative updates on {b['n']} training images: "
             f"{b['seconds']:.2f} s (after compilation; reference: about 5 s on a laptop), "
             f"relative error {b['rel_error']:.4f}.", "", "![bases](bases.png)", "",
             "Test digits, their projection on this all-digit cone and on their own class's "
             "cone:", "", "![projections](projections.png)", "")
    n = r["nnls"]
    self.add("## Sparse NNLS solvers", "",
             f"Codes of {n['n']} test digits on the {n['d']}-atom dictionary above (mu = 0); "
             "gap: largest relative objective gap to scipy.optimize.nnls; seconds after "
             "compilation.", "")
    self.table(("solver", "seconds", "max gap", "converged"),
               [(x["solver"], f"{x['seconds']:.3f}", f"{x['max_gap']:.0e}",
                 "" if "converged" not in x else f"{100 * x['converged']:.0f}%")
                for x in n["rows"]])
    self.add("## Nearest-cone classification", "")
    self.table(("digits 0 vs 1", "rank", "train images", "test accuracy"),
               [(k, v["rank"], v["n_train"], f"{100 * v['accuracy']:.2f}% ({v['errors']} errors "
                 f"in {v['n_test']})") for k, v in r["zero_vs_one"].items()])
    self.table(("ten digits", "test accuracy", "fit s", "predict s"),
               [(x["model"], f"{100 * x['accuracy']:.2f}%", f"{x['fit_seconds']:.1f}",
                 f"{x['predict_seconds']:.2f}") for x in r["ten_digits"]])
    u = r["uses"]
    self.add("## The same cones, reused", "",
             f"- Anomaly detection: the cones of the nine other digits score held-out digit "
             f"{u['anomaly']['held_out']} with ROC AUC {u['anomaly']['roc_auc']:.3f}.",
             f"- k-cones clustering (10 cones of rank {u['clustering']['rank']}, "
             f"{u['clustering']['n_iter']} rounds) of the test set: adjusted Rand index "
             f"{u['clustering']['ari']:.3f}, purity {u['clustering']['purity']:.3f} "
             f"({u['clustering']['seconds']:.0f} s).",
             "- Compression of test 3s on their class cone, median relative error: " + ", ".join(
                 f"{e:.3f} with {k} non-zeros" for k, e in
                 u["compression"]["median_rel_error"].items()) + ".",
             f"- Features: codes on every cone, shape {tuple(u['features']['shape'])}, "
             f"{100 * u['features']['nonzero_fraction']:.0f}% non-zero.", "")
    self.inverse()
    self.finetune()
    s = r["restoration"]
    self.add("## Restoration of a natural image", "",
             f"{s['n_cones']} patch cones of rank {s['rank']} (8 x 8 patches of astronaut, "
             f"{s['fit_seconds']:.0f} s) denoise the central {s['size']} x {s['size']} crop of "
             f"camera at sigma {s['sigma']}: {s['psnr_noisy']:.2f} -> {s['psnr_restored']:.2f} "
             f"dB PSNR in {s['seconds']:.1f} s. The full protocol against BM3D and the classics "
             "is experiments/natural_images.py (docs: Restoration).", "",
             "![restoration](restoration.png)", "")
    m = r["scale_out"]
    self.add("## Scale-out", "",
             f"nmf_sharded (rank 16, 20 HALS iterations, rows over the mesh {m['mesh']} of "
             f"{m['devices']} host devices) against nmf on one device: largest difference in "
             f"W {m['w_rel_diff']:.1e} of its largest entry; predict_sharded agrees with "
             f"predict on {100 * m['predictions_agree']:.2f}% of the test set.", "")
    t = r["streaming"]
    self.add("## Streaming NMF", "",
             f"nmf_minibatch (rank {t['rank']}, chunks of {t['chunk']}, {t['epochs']} epochs) "
             f"on {t['n']} images: relative error {t['stream_rel_error']:.4f} in "
             f"{t['stream_seconds']:.1f} s, against batch HALS "
             f"{t['batch_rel_error']:.4f} in {t['batch_seconds']:.1f} s.", "")
    k = r["sklearn"]
    self.add("## scikit-learn estimators", "",
             f"{k['classifier']} on {k['n']} training images: test accuracy "
             f"{100 * k['accuracy']:.2f}% ({k['fit_seconds']:.1f} s; conejax.score of the "
             f"cones of the same settings from fit_cones: {100 * k['functional_accuracy']:.2f}%);"
             f" Pipeline {k['pipeline']}: {100 * k['pipeline_accuracy']:.2f}%."
             + ("" if "cv_accuracy" not in k else
                " cross_val_score(ConeClassifier(16), 3 folds): " + ", ".join(
                    f"{100 * a:.2f}%" for a in k["cv_accuracy"])
                + f"; Pipeline ConeNMF(32) -> LogisticRegression: "
                f"{100 * k['nmf_pipeline_accuracy']:.2f}%."), "")
    if "reuse" in r:
      self.add("## Reuse: classification under operators, calibration, transfer", "",
               f"`{r['reuse']['command']}`:", "", r["reuse"]["table"], "")
    self.add("## Time per section", "")
    self.table(("section", "wall s", "CPU s"),
               [(name, f"{w:.1f}", f"{c:.1f}") for name, (w, c) in r["timing"].items()])
    return "\n".join(self.lines)

  def inverse(self):
    v = self.r["inverse"]
    self.add("## Inverse problems and source separation", "",
             f"experiments/inverse_problems.py ({v['n_test']} test digits, every parameter tuned "
             f"on {v['n_val']} held-out training digits; panels in "
             f"`{v['folder']}/inverse_*.png`):", "")
    self.table(("task", "degradation", "method", "PSNR dB", "SSIM"),
               [(x["task"], x["level"], x["method"], f"{x['psnr']:.2f}", f"{x['ssim']:.3f}")
                for x in v["rows"]])
    if v["separation"]:
      self.table(("separation (Wiener mask)", "tuned mu_h", "median PSNR dB"),
                 [(f"{x['pair']} ({x['n']} test mixtures)", f"{x['mu_h']:g}",
                   f"{x['median_psnr']:.2f}") for x in v["separation"]])

  def finetune(self):
    f = self.r["finetune"]
    self.add("## Fine-tuning with optax", "")
    if "ten_digits" not in f:
      self.add(f"The rank-{f['rank']} class cones, {f['steps']} Adam steps of cross entropy "
               f"(cosine schedule from 3e-3, validation on 1/12 of the training images picks "
               f"step {f['best_step']}; {f['seconds']:.0f} s): test accuracy "
               f"{100 * f['accuracy_before']:.2f}% -> {100 * f['accuracy_after']:.2f}%. "
               "The full experiment (against the MLP, and adversarial fine-tuning for "
               "separation) is `--full` or experiments/finetune.py.", "")
      return
    self.table(("ten digits", "test accuracy", "seconds"),
               [(x["model"], f"{100 * x['accuracy']:.2f}%", f"{x['seconds']:.0f}")
                for x in f["ten_digits"]])
    self.table(("0 + 1 separation", "rank", "median PSNR dB"),
               [(x["cones"], x["rank"], f"{x['median_psnr']:.2f}") for x in f["separation"]])
    self.add(f"Curves: ![history]({f['folder']}/finetune_history.png) "
             f"![separation]({f['folder']}/finetune_separation.png)", "")
