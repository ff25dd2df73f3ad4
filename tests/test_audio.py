"""conejax.audio and separate(beta_loss=...): against scipy.signal, closed forms and numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

import conejax
from conejax import audio


def _signal(T=2000, seed=0):
  t = np.arange(T) / 8000
  rng = np.random.default_rng(seed)
  return np.sin(2 * np.pi * 440 * t) + 0.3 * rng.standard_normal(T)


@pytest.mark.parametrize("n_fft, hop", [(256, 64), (128, 64), (64, 48)])
def test_stft_equals_scipy_and_istft_inverts_it(n_fft, hop):
  x = _signal()
  _, _, ref = scipy.signal.stft(x, nperseg=n_fft, noverlap=n_fft - hop)
  Z = audio.stft(jnp.asarray(x), n_fft=n_fft, hop=hop)
  np.testing.assert_allclose(np.asarray(Z), ref.T, atol=1e-12)
  _, back = scipy.signal.istft(ref, nperseg=n_fft, noverlap=n_fft - hop)
  ours = audio.istft(Z, n_fft=n_fft, hop=hop, length=x.size)
  np.testing.assert_allclose(np.asarray(ours), back[:x.size], atol=1e-12)
  np.testing.assert_allclose(np.asarray(ours), x, atol=1e-10)


def test_stft_batches_and_jits():
  X = np.stack([_signal(seed=0), _signal(seed=1)])
  Z = jax.jit(lambda x: audio.stft(x, n_fft=128, hop=32))(X)
  np.testing.assert_allclose(np.asarray(Z[1]), np.asarray(audio.stft(X[1], n_fft=128, hop=32)),
                             atol=1e-12)


def test_istft_with_phase_of_masks_adds_up_to_the_mixture():
  x = _signal()
  Z = audio.stft(x, n_fft=128, hop=32)
  mask = np.random.default_rng(1).uniform(size=Z.shape)
  S = jnp.stack([mask * jnp.abs(Z), (1 - mask) * jnp.abs(Z)])
  parts = audio.istft_with_phase(S, Z, n_fft=128, hop=32, length=x.size)
  assert parts.shape == (2, x.size)
  np.testing.assert_allclose(np.asarray(parts.sum(0)), x, atol=1e-10)
  np.testing.assert_allclose(np.asarray(audio.istft_with_phase(jnp.abs(Z), Z, n_fft=128, hop=32,
                                                              length=x.size)), x, atol=1e-10)


def test_si_sdr_closed_form_and_scale_invariance():
  rng = np.random.default_rng(0)
  s = rng.standard_normal(500)
  e = rng.standard_normal(500)
  e -= (e @ s) / (s @ s) * s                       # orthogonal error: SI-SDR = |s|^2 / |e|^2
  np.testing.assert_allclose(float(audio.si_sdr(s, s + e)), 10 * np.log10((s @ s) / (e @ e)),
                             rtol=1e-12)
  est = rng.standard_normal(500) + s
  a = (est @ s) / (s @ s)
  ref = 10 * np.log10(np.sum((a * s) ** 2) / np.sum((a * s - est) ** 2))
  np.testing.assert_allclose(float(audio.si_sdr(s, est)), ref, rtol=1e-12)
  np.testing.assert_allclose(float(audio.si_sdr(s, -3.0 * est)), ref, rtol=1e-12)
  batch = audio.si_sdr(np.stack([s, s]), np.stack([est, s + e]))
  np.testing.assert_allclose(np.asarray(batch), [ref, 10 * np.log10((s @ s) / (e @ e))],
                             rtol=1e-12)


def _kl_reference(W, V, n_iter, mu_h=0.0):
  """numpy KL multiplicative updates of the codes (scikit-learn's transform) + Wiener mask."""
  K, m, d = W.shape
  union = np.transpose(W, (1, 0, 2)).reshape(m, K * d)
  H = np.full((V.shape[0], K * d), np.sqrt(V.mean() / (K * d)))
  for _ in range(n_iter):
    WH = np.maximum(H @ union.T, np.finfo(np.float32).eps)
    H = H * ((V / WH) @ union) / (union.sum(0) + mu_h)
  parts = np.einsum("nkd,kmd->nkm", H.reshape(-1, K, d), W)
  return parts, V[:, None] * parts / parts.sum(1, keepdims=True)


@pytest.mark.parametrize("mu_h", [0.0, 0.1])
def test_separate_kl_equals_numpy_mu_coding_and_wiener_mask(mu_h):
  rng = np.random.default_rng(0)
  W = rng.uniform(0.1, 1.0, size=(2, 12, 3))
  V = np.einsum("nkd,kmd->nm", rng.uniform(size=(5, 2, 3)), W) + 0.01
  plain_ref, wiener_ref = _kl_reference(W, V, 40, mu_h)
  kw = dict(beta_loss="kullback-leibler", mu_h=mu_h, max_iter=40, tol=0.0)
  np.testing.assert_allclose(np.asarray(conejax.separate(W, V, wiener=False, **kw)), plain_ref,
                             rtol=1e-8)
  wiener = conejax.separate(W, V, **kw)
  np.testing.assert_allclose(np.asarray(wiener), wiener_ref, rtol=1e-8)
  np.testing.assert_allclose(np.asarray(wiener.sum(1)), V, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(conejax.separate(W, V[0], **kw)), wiener_ref[0],
                             rtol=1e-8)


def test_separate_frobenius_default_unchanged():
  rng = np.random.default_rng(2)
  W = rng.uniform(size=(2, 10, 3))
  V = rng.uniform(size=(4, 10))
  np.testing.assert_array_equal(np.asarray(conejax.separate(W, V)),
                                np.asarray(conejax.separate(W, V, beta_loss="frobenius")))


def test_separate_audio_parts_add_up_and_follow_separate():
  x = _signal(1024)
  rng = np.random.default_rng(3)
  W = rng.uniform(0.1, 1.0, size=(2, 33, 4))
  parts = audio.separate_audio(W, x, n_fft=64, hop=16, beta_loss="kullback-leibler",
                               max_iter=20)
  assert parts.shape == (2, x.size)
  np.testing.assert_allclose(np.asarray(parts.sum(0)), x, atol=1e-8)
  Z = audio.stft(x, n_fft=64, hop=16)
  mags = conejax.separate(W, jnp.abs(Z), beta_loss="kullback-leibler", max_iter=20)
  ref = audio.istft_with_phase(jnp.swapaxes(mags, 0, 1), Z, n_fft=64, hop=16, length=x.size)
  np.testing.assert_allclose(np.asarray(parts), np.asarray(ref), atol=1e-12)


def test_bad_input_names_the_fix():
  with pytest.raises(ValueError, match="hop must be < n_fft"):
    audio.stft(np.zeros(100), n_fft=32, hop=64)
  with pytest.raises(ValueError, match=r"Z must be \(\.\.\., frames, 17\)"):
    audio.istft(np.zeros((5, 16), complex), n_fft=32, hop=8)
  with pytest.raises(ValueError, match="same length"):
    audio.si_sdr(np.ones(5), np.ones(6))
  with pytest.raises(ValueError, match="mixture STFT's shape"):
    audio.istft_with_phase(np.ones((2, 4, 17)), np.ones((5, 17), complex), n_fft=32, hop=8)
  with pytest.raises(ValueError, match=r"x must be one signal"):
    audio.separate_audio(np.ones((2, 17, 2)), np.ones((2, 100)), n_fft=32, hop=8)
  W = np.ones((2, 6, 2))
  with pytest.raises(ValueError, match="leave them at their defaults"):
    conejax.separate(W, np.ones((3, 6)), beta_loss="kullback-leibler", solver="apg")
  with pytest.raises(ValueError, match="beta_loss"):
    conejax.separate(W, np.ones((3, 6)), beta_loss="kl")
