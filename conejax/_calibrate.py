"""Temperature scaling of the cones' class probabilities (``calibrate``).

``predict_proba`` is softmax(-D^2 / T) over the distances D (N, K) of ``conejax.distance``;
``calibrate`` fits T on a validation split by log-likelihood, as a network's logits are
calibrated by temperature scaling.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from conejax import _checks, _cone


@functools.partial(jax.jit, static_argnames="n_steps")
def _fit_temperature(D, labels, *, n_steps: int = 100):
  """The T > 0 minimising the mean of -log softmax(-D^2 / T)[label] over the rows of D.

  With beta = 1 / T the objective f(beta) = mean_i beta g_iy + logsumexp_k(-beta g_ik)
  (g = D^2 - min D^2, from differences as in ``predict_proba``) is convex in beta, so its
  derivative mean_i g_iy - E_p[g_i] is increasing in log beta: bisection on its sign over
  log beta in log(1 / median gap) -+ 30, ``n_steps`` halvings. Returns T and whether the
  minimiser lies inside the bracket at each end (lower, upper).
  """
  nearest = jnp.min(D, axis=-1, keepdims=True)
  gaps = (D - nearest) * (D + nearest)
  own = jnp.take_along_axis(gaps, labels[:, None], axis=-1)[:, 0]
  positive = jnp.where(gaps > 0, gaps, jnp.nan)
  scale = jnp.nanmedian(positive)
  scale = jnp.where(jnp.isfinite(scale), scale, 1.0)

  log_gaps = jnp.log(jnp.where(gaps > 0, gaps, 1))

  def slope(log_beta):
    # beta * gaps as exp(log beta + log gaps): no inf * 0 where beta leaves the float range
    p = jax.nn.softmax(jnp.where(gaps > 0, -jnp.exp(log_beta + log_gaps), 0), axis=-1)
    return jnp.mean(own - jnp.sum(p * gaps, axis=-1))

  low, high = -jnp.log(scale) - 30.0, -jnp.log(scale) + 30.0

  def halve(_, bounds):
    low, high = bounds
    middle = 0.5 * (low + high)
    rising = slope(middle) > 0
    return jnp.where(rising, low, middle), jnp.where(rising, middle, high)

  inside = (slope(low) < 0, slope(high) > 0)
  low, high = lax.fori_loop(0, n_steps, halve, (low, high))
  T = jnp.exp(-0.5 * (low + high))
  return jnp.where(jnp.any(jnp.isnan(D)), jnp.nan, T).astype(D.dtype), inside


def _class_indices(cones: _cone.Cones, y, n: int) -> np.ndarray:
  """The index into ``cones.classes`` of each of the n labels y; every label needs a cone."""
  y = _checks.check_labels(y, "y", "give each sample one of the cones' classes")
  if y.shape != (n,):
    raise ValueError(f"y must hold one label per sample, shape ({n},); got {y.shape}.")
  lookup = {label: k for k, label in enumerate(cones.classes)}
  missing = sorted(set(y.tolist()) - set(lookup), key=str)
  if missing:
    raise ValueError(f"labels {missing[:5]} have no cone; the cones' classes are "
                     f"{list(cones.classes)}.")
  return np.vectorize(lookup.__getitem__, otypes=[np.int32])(y)


def calibrate(cones: _cone.Cones, X_val, y_val, **options) -> jax.Array:
  """The temperature of ``predict_proba`` fitted by log-likelihood on a validation split.

  Temperature scaling: T* = argmin_T -mean_i log softmax(-D(x_i)^2 / T)[y_i], a 1-D convex
  problem in 1 / T solved by bisection on the sign of its derivative in log T to machine
  precision. The scale of D^2 depends on the data (on raw 0..16 digits every top
  probability is 1.000 for any T from 0.1 to 10), so fit T on data the cones were not
  trained on and pass it on: ``predict_proba(cones, X, temperature=T)``. The cones are not
  changed (a temperature is one number that goes with the data's scale, and the cones'
  distances stay the same), as with the temperature scaling of a network's logits.

  Args:
    cones: ``Cones`` (K, m, d).
    X_val: (N, m) validation samples, or (N, k) observations with an operator ``A``.
    y_val: (N,) labels, each one of ``cones.classes``.
    **options: as in ``distance``, including ``A`` and ``per_sample_operator``.

  Returns:
    () temperature > 0, in the cones' dtype.

  Raises:
    ValueError: on labels without a cone or of the wrong length, and as ``distance``.

  Warns:
    UserWarning: when the likelihood has no minimiser in (0, inf): every validation sample
      is nearest its own cone (T -> 0; the bracket's edge is returned), or the distances
      carry no information about the labels (T -> inf).

  Example:
    >>> import jax.numpy as jnp, conejax
    >>> cones = conejax.make_cones(jnp.eye(2)[:, :, None])   # two rays, e_0 and e_1
    >>> X = jnp.array([[1.0, 0.2], [0.3, 1.0], [0.6, 0.5]])
    >>> T = conejax.calibrate(cones, X, [0, 1, 1])
    >>> bool(T > 0)
    True
  """
  _checks.require_concrete("calibrate", "Calibrate outside jit; the temperature it returns "
                           "then works under jit.", X=X_val, W=cones.W)
  D = _cone.distance(cones, X_val, **options)
  if D.ndim != 2:
    raise ValueError(f"X_val must hold one sample per row, (N, m); got distances of shape "
                     f"{tuple(D.shape)}.")
  labels = jnp.asarray(_class_indices(cones, y_val, D.shape[0]))
  T, (below, above) = _fit_temperature(D, labels)
  if not bool(below):
    warnings.warn("calibrate: the distances carry no information about the validation labels "
                  "(the likelihood falls as T grows); returned the largest temperature tried.",
                  UserWarning, stacklevel=2)
  elif not bool(above):
    warnings.warn("calibrate: every validation sample is nearest its own cone, so the "
                  "likelihood rises as T -> 0; returned the smallest temperature tried. Use a "
                  "larger or harder validation split.", UserWarning, stacklevel=2)
  return T
