"""Audio for cones: magnitude STFTs, resynthesis with the mixture's phase, SI-SDR.

Spectrogram frames are samples, so they are rows: the STFT of a signal of T samples is a
complex (frames, freqs) array, freqs = n_fft // 2 + 1, and its magnitude is the data U a
cone codes (U ~ H W^T, each atom a spectral shape). Separation in the STFT domain
(``conejax.separate``) returns masked magnitudes |Z| * M_k; ``istft_with_phase`` puts
back the phase of the mixture, Z * M_k, and inverts the STFT. ``separate_audio`` does the
three steps on waveforms.

The STFT is ``jax.scipy.signal.stft`` with a periodic Hann window of ``n_fft`` samples and
``hop`` samples between frames (scipy's scaling and zero boundary padding, so that
``istft(stft(x)) == x``). ``stft``, ``istft``, ``istft_with_phase`` and ``si_sdr`` are pure
and work under ``jit`` and ``vmap``; ``separate_audio``, like ``conejax.separate``, checks
its data with concrete values and runs outside jit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.signal as jsignal
from jax.typing import ArrayLike

from conejax import _checks, _inverse


def _check_frames(n_fft: int, hop: int) -> tuple[int, int]:
  n_fft = _checks.check_positive_int(n_fft, "n_fft")
  hop = _checks.check_positive_int(hop, "hop")
  if hop >= n_fft:   # the Hann window is 0 at its first sample: frames must overlap
    raise ValueError(f"hop must be < n_fft for an invertible STFT; got hop={hop}, "
                     f"n_fft={n_fft}. Lower hop (n_fft // 4 is usual).")
  return n_fft, hop


def stft(x: ArrayLike, *, n_fft: int = 512, hop: int = 128) -> jax.Array:
  """Short-time Fourier transform, frames as rows.

  Args:
    x: (T,) signal, or (..., T) signals.
    n_fft: window length and FFT size in samples.
    hop: samples between consecutive frames (< n_fft, so frames overlap).

  Returns:
    (..., frames, n_fft // 2 + 1) complex STFT: scipy.signal.stft(x, nperseg=n_fft,
    noverlap=n_fft - hop) with its last two axes swapped.

  Raises:
    ValueError: on non-positive sizes or hop >= n_fft.

  Example:
    >>> import jax.numpy as jnp, conejax.audio as audio
    >>> audio.stft(jnp.zeros(1024), n_fft=256, hop=64).shape
    (17, 129)
  """
  n_fft, hop = _check_frames(n_fft, hop)
  x = jnp.asarray(x)
  _, _, Z = jsignal.stft(x, nperseg=n_fft, noverlap=n_fft - hop)
  return jnp.swapaxes(Z, -1, -2)


def istft(Z: ArrayLike, *, n_fft: int = 512, hop: int = 128,
          length: int | None = None) -> jax.Array:
  """Inverse of ``stft``: (..., frames, freqs) complex to (..., T) real signals.

  Args:
    Z: (..., frames, n_fft // 2 + 1) complex STFT, frames as rows.
    n_fft, hop: as given to ``stft``.
    length: samples to keep (the original T); None keeps all.

  Returns:
    (..., T) real signals.

  Raises:
    ValueError: on a frequency axis that is not n_fft // 2 + 1 long.
  """
  n_fft, hop = _check_frames(n_fft, hop)
  Z = jnp.asarray(Z)
  if Z.ndim < 2 or Z.shape[-1] != n_fft // 2 + 1:
    raise ValueError(f"Z must be (..., frames, {n_fft // 2 + 1}) for n_fft={n_fft}, frames as "
                     f"rows; got {tuple(Z.shape)}.")
  _, x = jsignal.istft(jnp.swapaxes(Z, -1, -2), nperseg=n_fft, noverlap=n_fft - hop)
  return x if length is None else x[..., :length]


def istft_with_phase(S: ArrayLike, Z_mix: ArrayLike, *, n_fft: int = 512, hop: int = 128,
                     length: int | None = None) -> jax.Array:
  """Signals from magnitudes S and the phase of the mixture's STFT Z_mix.

  x_k = istft(S_k * Z_mix / |Z_mix|), with phase 0 where Z_mix is 0. With S_k the Wiener
  masked magnitudes |Z_mix| * M_k of ``conejax.separate`` this is istft(M_k * Z_mix), so
  the estimates add up to the mixture.

  Args:
    S: (..., frames, freqs) non-negative magnitudes, e.g. (K, frames, freqs) sources.
    Z_mix: (frames, freqs) complex STFT of the mixture (broadcast against S).
    n_fft, hop, length: as in ``istft``.

  Returns:
    (..., T) real signals.

  Raises:
    ValueError: if S's last two axes are not Z_mix's shape.
  """
  S, Z_mix = jnp.asarray(S), jnp.asarray(Z_mix)
  if S.shape[-2:] != Z_mix.shape[-2:]:
    raise ValueError(f"S must end in the mixture STFT's shape {tuple(Z_mix.shape[-2:])} "
                     f"(frames, freqs); got {tuple(S.shape)}.")
  size = jnp.abs(Z_mix)
  phase = jnp.where(size > 0, Z_mix / jnp.where(size > 0, size, 1), 1)
  return istft(S * jnp.broadcast_to(phase, S.shape), n_fft=n_fft, hop=hop, length=length)


def si_sdr(reference: ArrayLike, estimate: ArrayLike) -> jax.Array:
  """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al., 2019).

  With the target a s, a = <s_hat, s> / ||s||^2 (s the reference, s_hat the estimate),
  SI-SDR = 10 log10(||a s||^2 / ||a s - s_hat||^2). Signals are not mean-removed.

  Args:
    reference: (..., T) true signals.
    estimate: (..., T) estimates (broadcast against reference).

  Returns:
    (...) SI-SDR in dB.

  Raises:
    ValueError: if the last axes differ in length.

  References:
    Le Roux, Wisdom, Erdogan, Hershey, "SDR - half-baked or well done?", ICASSP 2019.
  """
  s, s_hat = jnp.asarray(reference), jnp.asarray(estimate)
  if s.shape[-1] != s_hat.shape[-1]:
    raise ValueError(f"reference and estimate must have the same length (last axis); got "
                     f"{s.shape[-1]} and {s_hat.shape[-1]}. Trim both to the shorter one.")
  a = jnp.sum(s_hat * s, -1, keepdims=True) / jnp.sum(s * s, -1, keepdims=True)
  target = a * s
  return 10 * jnp.log10(jnp.sum(target ** 2, -1) / jnp.sum((target - s_hat) ** 2, -1))


def separate_audio(cones, x: ArrayLike, *, n_fft: int = 512, hop: int = 128,
                   beta_loss=None, mu_h=None, **options) -> jax.Array:
  """Splits a mixture signal into one signal per cone, through its magnitude STFT.

  Codes |stft(x)| frame by frame on the union of the cones (``conejax.separate`` under
  ``beta_loss``), Wiener-masks the mixture's magnitude and resynthesises each source with
  the mixture's phase, so the K signals add up to x (up to STFT round-off).

  Args:
    cones: ``Cones`` or (K, freqs, d) stack of magnitude-spectrum dictionaries, freqs =
      n_fft // 2 + 1.
    x: (T,) mixture signal.
    n_fft, hop: STFT sizes, as in ``stft``.
    beta_loss, mu_h, options: as in ``conejax.separate`` (beta_loss None: the cones' own loss).

  Returns:
    (K, T) source estimates in the order of the cones.

  Raises:
    ValueError: on x not 1-D, or as ``stft`` and ``conejax.separate``.
  """
  x = jnp.asarray(x)
  if x.ndim != 1:
    raise ValueError(f"x must be one signal of shape (T,); got {tuple(x.shape)}. Map over "
                     "several signals in a Python loop.")
  Z = stft(x, n_fft=n_fft, hop=hop)
  parts = _inverse.separate(cones, jnp.abs(Z), beta_loss=beta_loss, mu_h=mu_h, **options)
  return istft_with_phase(jnp.swapaxes(parts, 0, 1), Z, n_fft=n_fft, hop=hop,
                          length=x.shape[0])
