"""Transfer of MNIST cones to scikit-learn's 8 x 8 ``load_digits``: the few-shot part of
experiments/reuse.py (which runs it; ``python experiments/reuse.py --only digits`` reruns
it alone, ``--tune`` chooses the fine-tuning settings).

The digits are seen through ``operators.resize`` of the central 20 x 20 MNIST box. The
methods, for 1..20 labelled digits per class over several draws (and all training digits):

- zero-shot: the MNIST cones through A;
- the transferred dictionaries A W_k (unit atoms) with the labelled digits added as atoms,
  or refined by a warm-started NMF (20 multiplicative updates) on them;
- ``conejax.finetune`` through A on the labelled digits: the atoms stay 28 x 28, only their
  8 x 8 views are seen; then alone, or followed by the warm-started NMF, or by the labelled
  digits added as atoms;
- cones from scratch on the labelled digits, and (in reuse.py's scikit-learn subprocess)
  logistic regression and an SVC.

The fine-tuning settings (``FINETUNE``) were chosen by ``--tune``: separate draws (seeds
900..), 5 digits per class, scored on the other digits of the training half, never on the
test half.
"""

from __future__ import annotations

import functools
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import conejax
from conejax import operators

SHAPE, M = (28, 28), 784
# The best "finetune through A" row of tune()'s grid (results/reuse_digits_tuning.json:
# 93.2 +- 0.6% on 3 tuning draws, against 91.2 for the labelled digits as atoms): Adam 1e-3,
# T = 0.3, 120 full-batch steps on the labelled digits, each shifted by up to one pixel.
FINETUNE = dict(learning_rate=1e-3, temperature=0.3, steps=120, max_shift=1)
TUNE_GRID = dict(learning_rate=(3e-4, 1e-3), temperature=(0.3, 1.0), max_shift=(0, 1),
                 steps=(20, 40, 80, 120), draws=3, shots=5)
FT = "transfer + finetune through A"
NAMES = {"exemplars": "transfer + labelled digits as atoms",
         "warm_nmf": "transfer + warm-started NMF (20 MU)",
         "finetune": FT, "finetune_nmf": FT + " + warm-started NMF (20 MU)",
         "finetune_exemplars": FT + " + labelled digits as atoms",
         "scratch": "cones from scratch"}


def timed(fn):
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start


def load():
  """load_digits in [0, 1], its training half (the pool draws come from) and test half."""
  from sklearn.datasets import load_digits
  X, y = load_digits(return_X_y=True)
  order = np.random.default_rng(0).permutation(len(y))
  return (X / 16.0).astype(np.float32), y, order[: len(y) // 2], order[len(y) // 2:]


def operator():
  """MNIST's central 20 x 20 box resized to 8 x 8: what the digits' images show."""
  crop = np.arange(M).reshape(SHAPE)[4:24, 4:24].reshape(-1)
  return operators.resize((20, 20), (8, 8)) @ operators.subsample(crop, M)


def draw(X, y, pool, n, seed):
  """n labelled digits per class from the pool ("all": the whole pool)."""
  if n == "all":
    return pool
  r = np.random.default_rng(seed)
  return np.concatenate([r.choice(pool[y[pool] == k], n, replace=False) for k in range(10)])


def seen(cones, A):
  """The transferred dictionaries A W_k with unit atoms, (K, 64, d)."""
  B = jax.vmap(lambda W: operators.apply_to_dictionary(A, W))(cones.W)
  return np.asarray(B / jnp.linalg.norm(B, axis=1, keepdims=True))


def exemplars(B, mu_h, Xs, ys):
  """The transferred atoms B_k of each class with its labelled digits added as atoms."""
  n = min(np.sum(ys == k) for k in range(10))
  extra = np.stack([Xs[ys == k][:n].T for k in range(10)])
  extra = extra / np.maximum(np.linalg.norm(extra, axis=1, keepdims=True), 1e-12)
  return conejax.make_cones(np.concatenate([B, extra], axis=2), mu_h)


def warm_nmf(B, mu_h, Xs, ys):
  """Each transferred cone B_k refined by 20 multiplicative updates on its labelled digits."""
  W = []
  for k in range(10):
    U = Xs[ys == k]
    H0 = np.asarray(conejax.codes(conejax.make_cones(B[k]), U))[:, 0]
    fit = conejax.nmf(U, B.shape[2], key=jax.random.key(k), init=(B[k], H0), method="mu",
                      max_iter=20, tol=0.0, unit_atoms=True)
    W.append(np.asarray(fit.W))
  return conejax.make_cones(np.stack(W), mu_h)


def scratch(Xs, ys):
  n = min(np.sum(ys == k) for k in range(10))
  return conejax.fit_cones(Xs, ys, min(n, 32), key=jax.random.key(2))


def finetune(cones, A, Xs, ys, *, learning_rate, temperature, steps, max_shift, score=None,
             eval_every=None):
  """``conejax.finetune`` through A on the labelled digits (no held-out split: with a few
  digits per class every one trains); the cones of lowest loss on them are returned."""
  if score is None:
    def score(c):   # minus the cross entropy on the labelled digits, unshifted
      p = np.asarray(conejax.predict_proba(c, Xs, A=A, temperature=temperature), np.float64)
      return float(np.mean(np.log(np.maximum(p[np.arange(len(ys)), ys], 1e-300))))
  shift = (functools.partial(conejax.random_shift, image_shape=(8, 8), max_shift=max_shift)
           if max_shift else None)
  return conejax.finetune(cones, Xs, ys, optax.adam(learning_rate), steps=steps,
                          key=jax.random.key(0), batch_size=min(len(ys), 256),
                          validation=(Xs, ys), eval_every=eval_every or steps, score=score,
                          temperature=temperature, augment=shift, A=A, progress=False).cones


def run(size, cones, measure=True):
  """Zero-shot and few-shot rows (accuracy on the test half), the peers' job, the draws."""
  X, y, pool, test = load()
  A = operator()
  rows = [dict(method="transfer zero-shot (central 20x20 box -> 8x8)", shots=0,
               accuracy=float(conejax.score(cones, X[test], y[test], A=A)), seconds=0.0)]
  if size["all_digits"]:
    rows.append(dict(method="transfer zero-shot (whole 28x28 -> 8x8)", shots=0, seconds=0.0,
                     accuracy=float(conejax.score(cones, X[test], y[test],
                                                  A=operators.resize(SHAPE, (8, 8))))))
  B, mu_h = seen(cones, A), cones.mu_h
  wanted = size["digits_methods"] if measure else ()
  draws = [(n, d) for n in size["shots"] for d in range(size["draws"])]
  draws += [("all", 0)] if size["all_digits"] else []
  picks = []
  for n, d in tqdm(draws, desc="digits few-shot", leave=False):
    if d == 0:
      jax.clear_caches()   # each shot count compiles its own programs: keep memory bounded
    pick = draw(X, y, pool, n, 100 + d)
    picks.append(pick)
    Xs, ys = X[pick], y[pick]
    fitted = {}
    if "exemplars" in wanted:
      fitted["exemplars"] = timed(lambda: exemplars(B, mu_h, Xs, ys))
    if "warm_nmf" in wanted:
      fitted["warm_nmf"] = timed(lambda: warm_nmf(B, mu_h, Xs, ys))
    if "finetune" in wanted:
      tuned, seconds = timed(lambda: finetune(cones, A, Xs, ys, **FINETUNE))
      fitted["finetune"], B_tuned = (tuned, seconds), seen(tuned, A)
      for name, fn in (("finetune_nmf", warm_nmf), ("finetune_exemplars", exemplars)):
        then, more = timed(lambda fn=fn: fn(B_tuned, mu_h, Xs, ys))   # after the fine-tuning
        fitted[name] = (then, seconds + more)
    if "scratch" in wanted:
      fitted["scratch"] = timed(lambda: scratch(Xs, ys))
    for name, (c, seconds) in fitted.items():
      through = dict(A=A) if name == "finetune" else {}
      rows.append(dict(method=NAMES[name], shots=n, draw=d, seconds=seconds,
                       accuracy=float(conejax.score(c, X[test], y[test], **through))))
  peers = {f"digits_{part}_{i}": v for i, pick in enumerate(picks)
           for part, v in (("x", X[pick]), ("y", y[pick]))}
  peers.update(n_digits=len(picks), digits_test=X[test], digits_test_y=y[test])
  return rows, peers, draws


def peer_part(job, out):
  """Subprocess side: logistic regression and an SVC on each draw."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.svm import SVC
  for i in range(int(job["n_digits"])):
    xs, ys = job[f"digits_x_{i}"], job[f"digits_y_{i}"]
    for name, make in [("logistic", lambda: LogisticRegression(max_iter=1000)),
                       ("svc", lambda: SVC())]:
      start = time.perf_counter()
      model = make().fit(xs, ys)
      out[f"digits_{name}_seconds_{i}"] = time.perf_counter() - start
      out[f"digits_{name}_acc_{i}"] = float(np.mean(model.predict(job["digits_test"]) ==
                                                    job["digits_test_y"]))


def summarise(rows, peers_out, draws):
  """Mean and spread per (method, shots) of the digits rows and the scikit-learn peers."""
  for i, (n, d) in enumerate(draws):
    for name in ("logistic", "svc"):
      rows.append(dict(method=name, shots=n, draw=d,
                       seconds=float(peers_out[f"digits_{name}_seconds_{i}"]),
                       accuracy=float(peers_out[f"digits_{name}_acc_{i}"])))
  summary = []
  for key in dict.fromkeys((r["method"], r["shots"]) for r in rows):
    acc = [r["accuracy"] for r in rows if (r["method"], r["shots"]) == key]
    sec = [r["seconds"] for r in rows if (r["method"], r["shots"]) == key]
    summary.append(dict(method=key[0], shots=key[1], mean=float(np.mean(acc)),
                        std=float(np.std(acc)), draws=len(acc), seconds=float(np.mean(sec))))
  return summary


def tune(cones, grid=TUNE_GRID):
  """The fine-tuning grid on separate draws (seeds 900..), scored on the training half's
  other digits (never the test half): dict(grid, best (the settings of the best "finetune
  through A" row), rows (settings, method, accuracy per draw, mean, std), seconds)."""
  start = time.perf_counter()
  X, y, pool, _ = load()
  A = operator()
  scores = {}
  for d in tqdm(range(grid["draws"]), desc="tuning draws", leave=False):
    pick = draw(X, y, pool, grid["shots"], 900 + d)
    val, (Xs, ys) = np.setdiff1d(pool, pick), (X[pick], y[pick])
    acc = lambda c, **kw: float(conejax.score(c, X[val], y[val], **kw))
    B = seen(cones, A)
    scores.setdefault(("exemplars", ()), []).append(acc(exemplars(B, cones.mu_h, Xs, ys)))
    for lr, T, shift in itertools.product(grid["learning_rate"], grid["temperature"],
                                          grid["max_shift"]):
      evaluations = itertools.count()

      def record(c):   # every checkpoint of one run; the last cones are kept
        step = next(evaluations) * grid["steps"][0]
        if step in grid["steps"]:
          key = (lr, T, shift, step)
          B_c = seen(c, A)
          scores.setdefault(("finetune", key), []).append(acc(c, A=A))
          for name, fn in (("finetune_exemplars", exemplars), ("finetune_nmf", warm_nmf)):
            scores.setdefault((name, key), []).append(acc(fn(B_c, cones.mu_h, Xs, ys)))
        return step

      finetune(cones, A, Xs, ys, learning_rate=lr, temperature=T, max_shift=shift,
               steps=max(grid["steps"]), score=record, eval_every=grid["steps"][0])
  names = ("learning_rate", "temperature", "max_shift", "steps")
  rows = [dict(method=NAMES[name], **dict(zip(names, key)), mean=float(np.mean(v)),
               std=float(np.std(v)), accuracy=v) for (name, key), v in scores.items()]
  best = max((r for r in rows if r["method"] == FT), key=lambda r: r["mean"])
  return dict(grid=grid, best={k: best[k] for k in names}, rows=rows,
              seconds=time.perf_counter() - start)


def tune_summary(out, n=12):
  """The best rows of ``tune``'s output, as text."""
  names = ("learning_rate", "temperature", "max_shift", "steps")
  lines = [f"best {FT}: {out['best']} (FINETUNE is {FINETUNE}); {out['seconds']:.0f} s"]
  lines += [f"{100 * r['mean']:.1f} +- {100 * r['std']:.1f}  {r['method']}  "
            f"{ {k: r[k] for k in names if k in r} }"
            for r in sorted(out["rows"], key=lambda r: -r["mean"])[:n]]
  return "\n".join(lines)
