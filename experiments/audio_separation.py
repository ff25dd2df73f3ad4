"""Audio source separation and speech enhancement with cones on magnitude STFTs.

Setup (Debian/Ubuntu): ``apt-get install -y alsa-utils espeak-ng`` and
``pip install -e ".[bench]"`` (scikit-learn, fast_bss_eval, librosa). No audio file is
committed: the material is made at run time, in a temporary directory, from

- real speech: the channel-name WAVs of alsa-utils (/usr/share/sounds/alsa/Front_Center.wav
  etc.; one voice); noise: alsa's Noise.wav;
- synthetic speakers: ``espeak-ng -v <voice> -w out.wav "text"``, two voices as two speakers.

Everything is resampled to 16 kHz; magnitude STFTs (``conejax.audio.stft``, 512-sample Hann
window, hop 128) have frames as rows (m = 257). Held-out split: dictionaries are learnt on
training material (other WAVs, other sentences, the first 60% of Noise.wav) and scored on
test mixtures of unseen material (the last 40% of Noise.wav tiled), at 0 and 5 dB SNR.

Methods, each a cone of ``rank`` atoms per source, all Wiener-masked
(u_k = |Z| * W_k h_k / sum_j W_j h_j) and resynthesised with the mixture's phase:

- conejax Frobenius / KL: ``conejax.nmf`` per source (HALS; KL multiplicative updates), the
  mixture coded on the union by ``conejax.separate(beta_loss=...)`` under the same loss;
- conejax adversarial: the Frobenius cones fine-tuned by
  ``conejax.finetune(objective="adversarial", tau=0.5)`` (Adam 1e-3) on unit-norm training
  frames, the best of every 10th step chosen by SI-SDR on a 0 dB validation mixture of the
  training material's held-back 20%;
- semi-supervised (speech enhancement): the target's KL cone kept fixed, 2 interference
  atoms learnt on the noisy mixture alone by ``conejax.nmf(..., fixed_atoms=, mu_h=0.3)``.

The settings tau = 0.5, the 2 interference atoms and mu_h = 0.3 were chosen on that
validation mixture (rank 32, alsa speech / espeak A + noise), never on the test mixtures:
tau 0.1 (Adam 3e-3) / 0.5 / 1.0 gave +0.3 / +0.8 / +0.8 dB over the plain cones at their
best step (the gain fades after ~25 steps); 1, 2, 4 or 8 atoms with mu_h 0 or 0.1, and 2
atoms with mu_h 0.3 or 1.0, gave SI-SDR gains of +0.2 to +4.8 dB, the best 2 atoms at 0.3.
- peers (in a subprocess without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, as in bench_nmf.py):
  scikit-learn ``NMF(beta_loss="kullback-leibler", solver="mu")`` dictionaries coded by
  ``non_negative_factorization(update_H=False)`` under KL, and librosa.decompose.decompose
  (scikit-learn's default NMF) dictionaries coded the same way under its Frobenius loss.

Metrics of the target source: SI-SDR (``conejax.audio.si_sdr``) and SDR (fast_bss_eval, BSS
Eval v4's 512-tap distortion filter), and their gains over the unprocessed mixture.

Usage: ``python experiments/audio_separation.py [--quick] [--tables] [--diagnose]`` writes
results/audio_separation{,_quick}.json, .md and PNGs (the full run also fills the generated
block of docs/audio.md); ``--tables`` rewrites the markdown from the JSON only;
``--diagnose`` measures the ceilings behind the missed targets
(results/audio_separation_diagnosis.json).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import tempfile
import time

import numpy as np

import peers  # noqa: E402  (experiments/ is the script's own folder)

RESULTS = pathlib.Path(__file__).resolve().parent.parent / "results"
ALSA = pathlib.Path("/usr/share/sounds/alsa")
SR, N_FFT, HOP = 16000, 512, 128
ALSA_TRAIN = ["Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left"]
ALSA_TEST = ["Rear_Right", "Side_Left", "Side_Right"]
VOICES = {"espeak A": "en-us+m3", "espeak B": "en-gb+f3"}
TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog while the farmer watches from the hill.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "A journey of a thousand miles begins with a single step taken on a cold morning.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Numbers like seven, nineteen and forty two were written on the old blackboard.",
]
TEST_TEXT = [
    "When the sunlight strikes raindrops in the air, they act as a prism and form a rainbow.",
    "Every good boy deserves fudge, said the music teacher to the children in the hall.",
]
PAIRS = [("alsa speech", "noise"), ("espeak A", "noise"), ("espeak A", "espeak B")]
SNRS = (0.0, 5.0)


# ---------------------------------------------------------------------------- material

def _read(path: pathlib.Path) -> np.ndarray:
  from scipy.io import wavfile
  from scipy.signal import resample_poly
  rate, x = wavfile.read(path)
  x = x.astype(np.float64) / (32768.0 if x.dtype == np.int16 else 1.0)
  if x.ndim == 2:
    x = x.mean(1)
  g = np.gcd(SR, rate)
  return resample_poly(x, SR // g, rate // g)


def _espeak(voice: str, texts: list[str], tmp: pathlib.Path) -> np.ndarray:
  parts = []
  for i, text in enumerate(texts):
    out = tmp / f"{voice.replace('+', '_')}_{abs(hash(text))}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(out), text], check=True,
                   capture_output=True)
    parts.append(_read(out))
  return np.concatenate(parts)


def make_material(quick: bool) -> dict[str, dict[str, np.ndarray]]:
  """{source: {"train", "val", "test"}} signals at 16 kHz; val is the training material's
  last 20% (fine-tuning selection only), train the rest."""
  for tool in ("espeak-ng",):
    if shutil.which(tool) is None:
      raise SystemExit("espeak-ng is missing: apt-get install -y alsa-utils espeak-ng")
  if not (ALSA / "Noise.wav").exists():
    raise SystemExit(f"{ALSA} has no WAVs: apt-get install -y alsa-utils espeak-ng")
  train_text = TRAIN_TEXT[:3] if quick else TRAIN_TEXT
  test_text = TEST_TEXT[:1] if quick else TEST_TEXT
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    raw = {"alsa speech": (np.concatenate([_read(ALSA / f"{n}.wav") for n in ALSA_TRAIN]),
                           np.concatenate([_read(ALSA / f"{n}.wav") for n in ALSA_TEST]))}
    for name, voice in VOICES.items():
      raw[name] = (_espeak(voice, train_text, tmp), _espeak(voice, test_text, tmp))
  noise = _read(ALSA / "Noise.wav")
  cut = int(0.6 * noise.size)
  raw["noise"] = (noise[:cut], noise[cut:])
  material = {}
  for name, (train, test) in raw.items():
    scale = np.abs(train).max()
    split = int(0.8 * train.size)
    material[name] = {"train": train[:split] / scale, "val": train[split:] / scale,
                      "test": test / scale}
  return material


def mix(target: np.ndarray, interferer: np.ndarray, snr_db: float):
  """(target, scaled interferer, mixture) of the target's length, interferer tiled."""
  reps = int(np.ceil(target.size / interferer.size))
  n = np.tile(interferer, reps)[:target.size]
  n = n * np.sqrt(np.sum(target ** 2) / np.sum(n ** 2) / 10 ** (snr_db / 10))
  return target, n, target + n


# ---------------------------------------------------------------------------- peers

def peer_main(src: str, dst: str) -> None:
  """scikit-learn and librosa dictionaries + codes on the union; Wiener-masked magnitudes."""
  from sklearn.decomposition import NMF, non_negative_factorization
  job = np.load(src, allow_pickle=False)
  rank, n_iter = int(job["rank"]), int(job["n_iter"])
  out = {}
  for name, kwargs in (("sklearn", dict(beta_loss="kullback-leibler", solver="mu")),
                       ("librosa", None)):
    cpu = time.process_time()
    W = []
    for s in ("S0", "S1"):
      if name == "sklearn":
        W.append(NMF(rank, max_iter=n_iter, init="nndsvda", random_state=0,
                     **kwargs).fit(job[s]).components_)
      else:
        import librosa.decompose
        comps, _ = librosa.decompose.decompose(job[s].T, n_components=rank, sort=False,
                                               max_iter=n_iter, random_state=0)
        W.append(comps.T)   # librosa: (freqs, rank) components
    union = np.concatenate(W, 0)
    fit_cpu = time.process_time() - cpu
    for i, key in enumerate(k for k in job.files if k.startswith("mix")):
      cpu = time.process_time()
      options = (dict(solver="mu", beta_loss="kullback-leibler") if name == "sklearn"
                 else dict(solver="cd"))
      H, _, _ = non_negative_factorization(job[key], H=union, n_components=2 * rank,
                                           update_H=False, max_iter=n_iter, **options)
      parts = np.stack([H[:, :rank] @ union[:rank], H[:, rank:] @ union[rank:]], 1)
      total = parts.sum(1, keepdims=True)
      share = np.where(total > 0, parts / np.where(total > 0, total, 1), 0.5)
      out[f"{name}_{key}"] = job[key][:, None] * share
      out[f"{name}_{key}_cpu"] = fit_cpu + time.process_time() - cpu
  np.savez(dst, **out)


def run_peers(S0, S1, mixtures, rank, n_iter):
  return peers.run(__file__, dict(S0=S0, S1=S1, rank=rank, n_iter=n_iter,
                                  **{f"mix{i}": M for i, M in enumerate(mixtures)}))


# ---------------------------------------------------------------------------- conejax

def run(quick: bool = False, ranks=None, progress: bool = True) -> dict:
  import fast_bss_eval
  import jax
  import jax.numpy as jnp
  import optax
  from tqdm import tqdm

  import conejax
  from conejax import audio

  ranks = ranks or ([32] if quick else [16, 32])
  n_iter = 100 if quick else 200
  steps = 60 if quick else 100
  material = make_material(quick)
  spec = lambda x: audio.stft(jnp.asarray(x), n_fft=N_FFT, hop=HOP)
  mags = {name: {part: np.asarray(jnp.abs(spec(x))) for part, x in parts.items()}
          for name, parts in material.items()}

  def metrics(ref, est):
    est = np.asarray(est, np.float64)
    return {"si_sdr": float(audio.si_sdr(ref, est)),
            "sdr": float(fast_bss_eval.sdr(ref[None], est[None], filter_length=512)[0])}

  def resynth(parts, Z, length):   # parts (frames, K, freqs) masked magnitudes -> (K, T)
    return np.asarray(audio.istft_with_phase(jnp.swapaxes(jnp.asarray(parts), 0, 1), Z,
                                             n_fft=N_FFT, hop=HOP, length=length))

  rows, histories = [], {}
  total = len(ranks) * len(PAIRS)
  bar = tqdm(total=total, desc="audio separation", disable=not progress)
  example = None
  for rank in ranks:
    for target, interferer in PAIRS:
      bar.set_postfix_str(f"rank {rank}: {target} + {interferer}")
      S0, S1 = mags[target]["train"], mags[interferer]["train"]
      key = jax.random.key(rank)
      t = {}
      cpu = time.process_time()
      W_fro = jnp.stack([conejax.nmf(S, rank, key=k, max_iter=n_iter).W
                         for S, k in zip((S0, S1), jax.random.split(key))])
      t["conejax Frobenius"] = time.process_time() - cpu
      cpu = time.process_time()
      W_kl = jnp.stack([conejax.nmf(S, rank, key=k, beta_loss="kullback-leibler",
                                    max_iter=n_iter).W
                        for S, k in zip((S0, S1), jax.random.split(key))])
      t["conejax KL"] = time.process_time() - cpu
      # Adversarial fine-tuning of the Frobenius cones on unit-norm frames.
      cpu = time.process_time()
      frames, labels = [], []
      for label, S in enumerate((S0, S1)):
        norms = np.linalg.norm(S, axis=1)
        keep = norms > 1e-3 * norms.max()
        frames.append(S[keep] / norms[keep, None])
        labels.append(np.full(int(keep.sum()), label))
      X, y = np.concatenate(frames), np.concatenate(labels)
      v_target, v_interf, v_mix = mix(material[target]["val"], material[interferer]["val"], 0.0)
      Z_val = spec(v_mix)

      def val_score(cones):
        parts = conejax.separate(cones, jnp.abs(Z_val))
        return float(audio.si_sdr(v_target, resynth(parts, Z_val, v_mix.size)[0]))

      plain = conejax.make_cones(W_fro, 0.0)
      tuned = conejax.finetune(plain, X, y, optax.adam(1e-3), steps=steps,
                               key=jax.random.key(1), objective="adversarial", tau=0.5,
                               batch_size=128, eval_every=10, score=val_score,
                               validation=(X[[0, -1]], y[[0, -1]]), progress=False)
      t["conejax adversarial"] = t["conejax Frobenius"] + time.process_time() - cpu
      histories[f"{rank}/{target}+{interferer}"] = {
          "step": tuned.history.step.tolist(), "val_si_sdr": tuned.history.val_score.tolist(),
          "best_step": int(tuned.best_step)}
      tests = [mix(material[target]["test"], material[interferer]["test"], snr) for snr in SNRS]
      Zs = [spec(x) for _, _, x in tests]
      peers = run_peers(S0, S1, [np.asarray(jnp.abs(Z)) for Z in Zs], rank, n_iter)
      for i, (snr, (s, n, x), Z) in enumerate(zip(SNRS, tests, Zs)):
        V = jnp.abs(Z)
        est = {}
        for name, run_sep in (
            ("conejax Frobenius", lambda: conejax.separate(W_fro, V)),
            ("conejax KL", lambda: conejax.separate(W_kl, V, beta_loss="kullback-leibler",
                                                    max_iter=n_iter)),
            ("conejax adversarial", lambda: conejax.separate(tuned.cones, V))):
          cpu = time.process_time()
          est[name] = (resynth(run_sep(), Z, x.size), t[name] + time.process_time() - cpu)
        cpu = time.process_time()
        fit = conejax.nmf(V, 2, key=jax.random.key(2), fixed_atoms=W_kl[0], mu_h=0.3,
                          beta_loss="kullback-leibler", max_iter=n_iter)
        parts = jnp.stack([fit.H[:, :rank] @ fit.W[:, :rank].T,
                           fit.H[:, rank:] @ fit.W[:, rank:].T], 1)
        parts = V[:, None] * parts / jnp.maximum(parts.sum(1, keepdims=True), 1e-30)
        est["conejax semi-supervised KL"] = (resynth(parts, Z, x.size),
                                             t["conejax KL"] / 2 + time.process_time() - cpu)
        for peer, label in (("sklearn", "scikit-learn KL"), ("librosa", "librosa decompose")):
          est[label] = (resynth(peers[f"{peer}_mix{i}"], Z, x.size),
                        float(peers[f"{peer}_mix{i}_cpu"]))
        base = metrics(s, x)
        row = {"rank": rank, "target": target, "interferer": interferer, "snr_db": snr,
               "seconds": s.size / SR, "input": base, "methods": {}}
        for name, (signals, seconds) in est.items():
          m = metrics(s, signals[0])
          m["si_sdr_gain"] = m["si_sdr"] - base["si_sdr"]
          m["sdr_gain"] = m["sdr"] - base["sdr"]
          m["cpu_s"] = seconds
          m["interferer"] = metrics(n, signals[1])
          row["methods"][name] = m
        rows.append(row)
        if example is None and snr == 0.0:
          example = (target, interferer, np.asarray(V), {k: np.asarray(jnp.abs(spec(v[0][0])))
                                                         for k, v in est.items()},
                     np.asarray(jnp.abs(spec(s))))
      bar.update(1)
  bar.close()
  return {"quick": quick, "sample_rate": SR, "n_fft": N_FFT, "hop": HOP, "n_iter": n_iter,
          "finetune_steps": steps, "ranks": ranks, "rows": rows, "finetune": histories,
          "targets": targets({"rows": rows}), "_example": example}


# ---------------------------------------------------------------------------- diagnosis

def diagnose(rank: int = 32, progress: bool = True) -> dict:
  """Why targets miss: ceilings of the semi-supervised fit on the 0 dB speech + noise test
  mixtures, and the init of the KL dictionaries on speech + speech.

  Per mixture: the ideal ratio mask |S| / (|S| + |N|) with the mixture's phase (the ceiling
  of any magnitude mask), the semi-supervised fit with the speech cone learnt on the test
  speech itself (an oracle dictionary) and on the training speech, for 2 and 8 noise atoms
  and mu_h 0 and 0.3; then conejax KL dictionaries from scikit-learn's init ("nndsvda")
  beside the default init on espeak A + espeak B at ranks 16 and 32.
  """
  import jax
  import jax.numpy as jnp
  from tqdm import tqdm

  import conejax
  from conejax import audio
  material = make_material(False)
  spec = lambda x: audio.stft(jnp.asarray(x), n_fft=N_FFT, hop=HOP)
  resynth = lambda parts, Z, n: np.asarray(audio.istft_with_phase(
      jnp.swapaxes(jnp.asarray(parts), 0, 1), Z, n_fft=N_FFT, hop=HOP, length=n))
  kl = dict(beta_loss="kullback-leibler", max_iter=200)
  out = {"semi": [], "init": []}
  cases = [(t, m) for t in ("alsa speech", "espeak A") for m in ("train", "test")]
  bar = tqdm(total=len(cases) + 4, desc="audio diagnosis", disable=not progress)
  for target, source in cases:
    s, n, x = mix(material[target]["test"], material["noise"]["test"], 0.0)
    Z = spec(x)
    V = jnp.abs(Z)
    base = float(audio.si_sdr(s, x))
    S_abs, N_abs = jnp.abs(spec(s)), jnp.abs(spec(n))
    irm = jnp.stack([S_abs, N_abs], 1) / jnp.maximum((S_abs + N_abs)[:, None], 1e-30)
    row = {"target": target, "speech_cone_from": source,
           "ideal_ratio_mask_gain": float(audio.si_sdr(s, resynth(V[:, None] * irm, Z, x.size)[0]))
           - base}
    W0 = conejax.nmf(jnp.abs(spec(material[target][source])), rank, key=jax.random.key(0),
                     **kl).W
    for r_noise in (2, 8):
      for mu in (0.0, 0.3):
        fit = conejax.nmf(V, r_noise, key=jax.random.key(2), fixed_atoms=W0, mu_h=mu, **kl)
        parts = jnp.stack([fit.H[:, :rank] @ fit.W[:, :rank].T,
                           fit.H[:, rank:] @ fit.W[:, rank:].T], 1)
        parts = V[:, None] * parts / jnp.maximum(parts.sum(1, keepdims=True), 1e-30)
        row[f"semi_{r_noise}_atoms_mu_{mu}_gain"] = float(
            audio.si_sdr(s, resynth(parts, Z, x.size)[0])) - base
    out["semi"].append(row)
    bar.update(1)
  for r in (16, 32):
    s, n, x = mix(material["espeak A"]["test"], material["espeak B"]["test"], 0.0)
    Z = spec(x)
    for init in ("default", "nndsvda"):
      options = {} if init == "default" else {"init": "nndsvda"}
      W = jnp.stack([conejax.nmf(jnp.abs(spec(material[k]["train"])), r,
                                 key=jax.random.key(r), **kl, **options).W
                     for k in ("espeak A", "espeak B")])
      est = resynth(conejax.separate(W, jnp.abs(Z), **kl), Z, x.size)[0]
      out["init"].append({"rank": r, "init": init, "si_sdr": float(audio.si_sdr(s, est)),
                          "sdr": float(__import__("fast_bss_eval").sdr(
                              s[None], np.asarray(est, np.float64)[None])[0])})
      bar.update(1)
  bar.close()
  return out


# ---------------------------------------------------------------------------- report

def targets(result: dict) -> dict:
  rows = result["rows"]
  semi = [r["methods"]["conejax semi-supervised KL"]["si_sdr_gain"] for r in rows
          if r["snr_db"] == 0.0 and r["interferer"] == "noise"]
  best = [max(r["methods"][m]["sdr"] for m in ("conejax Frobenius", "conejax KL",
                                                 "conejax adversarial"))
          - r["methods"]["scikit-learn KL"]["sdr"] for r in rows]
  adv = [r["methods"]["conejax adversarial"]["si_sdr"] - r["methods"]["conejax Frobenius"]["si_sdr"]
         for r in rows]
  return {
      "semi_supervised_si_sdr_gain_0db_min": min(semi),
      "semi_supervised_met": bool(min(semi) >= 5.0),
      "best_supervised_minus_sklearn_sdr_min": min(best),
      "supervised_met": bool(min(best) >= 0.0),
      "adversarial_minus_plain_si_sdr_mean": float(np.mean(adv)),
      "adversarial_minus_plain_si_sdr_min": min(adv),
      "adversarial_met": bool(min(adv) >= 1.0),
  }


METHODS = ["conejax Frobenius", "conejax KL", "conejax adversarial",
           "conejax semi-supervised KL", "scikit-learn KL", "librosa decompose"]


def markdown(result: dict) -> str:
  lines = [f"Target-source SDR / SI-SDR in dB (held-out material, 16 kHz, STFT {result['n_fft']}"
           f"/{result['hop']}, {result['n_iter']} iterations"
           f"{', quick form' if result['quick'] else ''}); input = the unprocessed mixture.", "",
           "| rank | mixture | SNR | input | " + " | ".join(METHODS) + " |",
           "|---" * (4 + len(METHODS)) + "|"]
  for r in result["rows"]:
    cells = [f"{r['input']['sdr']:.2f} / {r['input']['si_sdr']:.2f}"]
    best = max(r["methods"][m]["sdr"] for m in METHODS)
    for m in METHODS:
      v = r["methods"][m]
      cell = f"{v['sdr']:.2f} / {v['si_sdr']:.2f}"
      cells.append(f"**{cell}**" if v["sdr"] == best else cell)
    lines.append(f"| {r['rank']} | {r['target']} + {r['interferer']} | {r['snr_db']:.0f} dB | "
                 + " | ".join(cells) + " |")
  t = result["targets"]
  lines += ["", "| target | measured | met |", "|---|---|---|",
            f"| semi-supervised enhancement >= +5 dB SI-SDR at 0 dB (speech + noise) | min gain "
            f"{t['semi_supervised_si_sdr_gain_0db_min']:+.2f} dB | {'yes' if t['semi_supervised_met'] else 'no'} |",
            f"| best supervised conejax cones >= scikit-learn KL SDR, every mixture | min "
            f"difference {t['best_supervised_minus_sklearn_sdr_min']:+.2f} dB | {'yes' if t['supervised_met'] else 'no'} |",
            f"| adversarial >= plain Frobenius cones + 1 dB SI-SDR | mean "
            f"{t['adversarial_minus_plain_si_sdr_mean']:+.2f}, min "
            f"{t['adversarial_minus_plain_si_sdr_min']:+.2f} dB | {'yes' if t['adversarial_met'] else 'no'} |"]
  cpu = {m: np.mean([r["methods"][m]["cpu_s"] for r in result["rows"]]) for m in METHODS}
  lines += ["", "Mean CPU seconds per mixture (dictionary learning included; shared machine): "
            + ", ".join(f"{m} {s:.1f}" for m, s in cpu.items()) + "."]
  return "\n".join(lines) + "\n"


def figures(result: dict, example, prefix: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = result["rows"]
  fig, ax = plt.subplots(figsize=(11, 4))
  width = 0.8 / len(METHODS)
  for j, m in enumerate(METHODS):
    ax.bar(np.arange(len(rows)) + j * width, [r["methods"][m]["si_sdr_gain"] for r in rows],
           width, label=m)
  ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2)
  ax.set_xticklabels([f"r{r['rank']}\n{r['target']}+\n{r['interferer']} {r['snr_db']:.0f}dB"
                      for r in rows], fontsize=7)
  ax.set_ylabel("SI-SDR gain over the mixture (dB)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(f"{prefix}_gains.png", dpi=120)
  plt.close(fig)
  if example is not None:
    target, interferer, V, est, clean = example
    panels = [("mixture", V), ("clean " + target, clean)] + list(est.items())
    fig, axes = plt.subplots(1, len(panels), figsize=(2 * len(panels), 2.2), sharey=True)
    for ax, (name, S) in zip(axes, panels):
      ax.imshow(np.log10(S.T + 1e-6), origin="lower", aspect="auto", cmap="magma")
      ax.set_title(name, fontsize=7)
      ax.set_xlabel("frame")
    axes[0].set_ylabel("frequency bin")
    fig.suptitle(f"{target} + {interferer}, 0 dB", fontsize=9)
    fig.tight_layout()
    fig.savefig(f"{prefix}_spectrograms.png", dpi=60)
    plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="less material, rank 32 only")
  parser.add_argument("--tables", action="store_true",
                      help="rewrite the markdown table from the JSON only")
  parser.add_argument("--diagnose", action="store_true",
                      help="ceilings of the missed targets -> results/audio_separation_diagnosis.json")
  parser.add_argument("--peer", nargs=2, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.peer:
    return peer_main(*args.peer)
  if args.diagnose:
    out = diagnose()
    (RESULTS / "audio_separation_diagnosis.json").write_text(json.dumps(out, indent=1))
    return print(json.dumps(out, indent=1))
  prefix = RESULTS / ("audio_separation_quick" if args.quick else "audio_separation")
  if args.tables:
    result = json.loads(pathlib.Path(f"{prefix}.json").read_text())
  else:
    wall, cpu = time.perf_counter(), time.process_time()
    result = run(quick=args.quick)
    example = result.pop("_example")
    result["wall_s"] = time.perf_counter() - wall
    result["cpu_s"] = time.process_time() - cpu
    RESULTS.mkdir(exist_ok=True)
    pathlib.Path(f"{prefix}.json").write_text(json.dumps(result, indent=1))
    figures(result, example, prefix)
  table = markdown(result)
  pathlib.Path(f"{prefix}.md").write_text(table)
  if not args.quick:   # the generated block of docs/audio.md
    from readme_tables import replace_block
    page = RESULTS.parent / "docs" / "audio.md"
    text = replace_block(page.read_text(), "audio_separation", table)
    if text is not None:
      page.write_text(text)
  print(table)


if __name__ == "__main__":
  main()
