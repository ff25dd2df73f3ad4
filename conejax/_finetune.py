"""Fine-tuning class cones with optax: discriminative and adversarial objectives.

Every sample x of a mini-batch (B, m) is coded on each of the K cones and scored by its
squared distances D_k(x)^2 = ||x - W_k h_k(x)||^2, a (B, K) matrix differentiated through
the sparse NNLS (implicitly or by unrolling, see ``conejax.nnls``). Two objectives use it:

- "cross_entropy" (discriminative): the cross entropy of softmax(-D^2 / temperature) against
  the labels, which pulls each class's cone towards its own samples and away from the others'.
- "adversarial" (maximum discrepancy, after Ludvigsen and Grasmair's adversarial generative
  NMF): for each cone k, the mean D_k^2 over its own samples minus ``tau`` times the mean
  D_k^2 over the other classes' samples, so that each cone fits its source well and the
  other sources badly, which is what source separation needs.

Any optax ``GradientTransformation`` takes the steps; after each one the dictionaries are
projected back onto W >= 0 and their atoms renormalised to unit length, so the result is
again ``Cones``. A held-out validation split is scored every ``eval_every`` steps; the best
cones are kept and ``patience`` evaluations without improvement stop the run.

Through an operator A (m -> k, ``conejax.operators``) the samples are observations v = A u
(B, k) and D_k(v)^2 = ||v - A W_k h_k(v)||^2 is the misfit of v on cone(A W_k), the
distance of ``conejax.distance(cones, V, A=A)``, differentiated with respect to W: the atoms
stay in the signal space (m), non-negative and unit-norm, and only their images A W_k are
seen, so cones trained on one resolution or dataset adapt to observations of another.
"""

from __future__ import annotations

import functools
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from tqdm import tqdm

from conejax import _checks, _cone, _nnls, operators

_HIGHEST = lax.Precision.HIGHEST
OBJECTIVES = ("cross_entropy", "adversarial")


class FinetuneHistory(NamedTuple):
  """What was measured at each evaluation (arrays of shape (n_evals,)).

  Attributes:
    step: optimiser steps taken before the evaluation (0 is the starting cones).
    train_loss: mean training loss over the steps since the previous evaluation.
    val_loss: the objective on the validation split.
    val_score: the score that selects the best cones (higher is better): the validation
      accuracy by default.
  """
  step: np.ndarray
  train_loss: np.ndarray
  val_loss: np.ndarray
  val_score: np.ndarray


class FinetuneResult(NamedTuple):
  """Fine-tuned cones and how they got there.

  Attributes:
    cones: the cones of the best validation score.
    history: ``FinetuneHistory`` of every evaluation.
    best_step: the step of the returned cones.
    seconds: wall-clock time of the run, evaluations included.
  """
  cones: _cone.Cones
  history: FinetuneHistory
  best_step: int
  seconds: float


def squared_distances(W, X, mu_h, *, solver, differentiation: str = "implicit", A=None,
                      classes=(), settings=()) -> jax.Array:
  """D_k(x)^2 of every row of X (B, m) to every cone of W (K, m, d): (B, K), differentiable.

  With an operator A, X holds observations (B, k) and D_k^2 is the squared distance of
  ``conejax.distance(cones, X, A=A)`` (the misfit on cone(A W_k)); ``classes`` and
  ``settings`` are then those of the cones (the loss they code under).
  """
  if A is not None:
    cones = _cone.Cones(W, mu_h, classes, settings)
    return _cone.distance(cones, X, A=A, solver=solver, differentiation=differentiation,
                          batch_size=max(X.shape[0], 1)) ** 2
  H0 = jnp.zeros(X.shape[:1] + W.shape[:1] + W.shape[-1:], X.dtype)
  H = _nnls.solve_dictionary(W, X, mu_h, H0, solver=solver, batch_size=X.shape[0],
                             differentiation=differentiation, penalty="absolute").h
  residual = X[:, None, :] - jnp.einsum("bkd,kmd->bkm", H, W, precision=_HIGHEST)
  return jnp.sum(residual**2, axis=-1)


def cross_entropy_loss(D2, labels, temperature):
  """Mean cross entropy of softmax(-D2 / temperature), D2 (B, K), labels (B,) in [0, K)."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(-D2 / temperature, labels))


def adversarial_loss(D2, labels, tau):
  """Sum over cones k of mean_{y = k} D_k^2 - tau mean_{y != k} D_k^2; D2 (B, K)."""
  own = jax.nn.one_hot(labels, D2.shape[1], dtype=D2.dtype)
  mean = lambda weights: jnp.sum(weights * D2, 0) / jnp.maximum(jnp.sum(weights, 0), 1)
  return jnp.sum(mean(own) - tau * mean(1 - own))


def objective_loss(objective: str, D2, labels, weight):
  """The fine-tuning objective ``objective`` of D2 (B, K): ``cross_entropy_loss`` with
  temperature ``weight``, or ``adversarial_loss`` with tau ``weight``."""
  if objective == "cross_entropy":
    return cross_entropy_loss(D2, labels, weight)
  return adversarial_loss(D2, labels, weight)


@functools.partial(jax.jit, static_argnames=("objective", "options", "meta"))
def _loss_and_grad(W, X, labels, mu_h, weight, A, *, objective, options, meta):
  """The objective on one batch (weight: the temperature or tau) and its gradient in W.

  At module level, so that every ``finetune`` call on the same shapes and settings reuses
  one compiled program (compiling the differentiated codes takes most of a short run).
  """
  through = {} if A is None else dict(A=A, classes=meta[0], settings=meta[1])

  def loss(W):
    D2 = squared_distances(W, X, mu_h, **dict(options), **through)
    return objective_loss(objective, D2, labels, weight)

  return jax.value_and_grad(loss)(W)


def random_shift(key: jax.Array, X: jax.Array, image_shape: tuple[int, int], *,
                 max_shift: int = 1) -> jax.Array:
  """Translates every image of X (B, m) by its own random offset, zeros filling in.

  Offsets are drawn uniformly from {-max_shift, ..., max_shift} in each direction; use as
  ``augment=functools.partial(random_shift, image_shape=(28, 28))`` in ``finetune``.

  Args:
    key: PRNG key.
    X: (B, m) images flattened row-major, m = prod(image_shape).
    image_shape: (rows, columns).
    max_shift: largest offset in pixels (1 fine-tuned MNIST cones best; see the README).

  Returns:
    (B, m) translated images.
  """
  rows, cols = image_shape
  if X.ndim != 2 or X.shape[1] != rows * cols:
    raise ValueError(f"X must be (B, {rows * cols}) for images of shape {image_shape}; "
                     f"got {X.shape}.")
  pad = int(max_shift)
  if pad != max_shift or pad < 0:
    raise ValueError(f"max_shift must be a whole number of pixels >= 0; got {max_shift}.")
  offsets = jax.random.randint(key, (X.shape[0], 2), 0, 2 * pad + 1)
  padded = jnp.pad(X.reshape(-1, rows, cols), ((0, 0), (pad, pad), (pad, pad)))
  crop = lambda image, offset: lax.dynamic_slice(image, (offset[0], offset[1]), (rows, cols))
  return jax.vmap(crop)(padded, offsets).reshape(X.shape)


def _check_augment(augment, key, batch):
  """augment must map (key, batch (B, m)) to a batch of the same shape and dtype."""
  if not callable(augment):
    raise ValueError(f"augment must be a function (key, batch) -> batch; got "
                     f"{type(augment).__name__}.")
  out = jax.eval_shape(augment, key, batch)
  if getattr(out, "shape", None) != batch.shape or getattr(out, "dtype", None) != batch.dtype:
    raise ValueError(f"augment must return a batch of the shape and dtype it is given "
                     f"({batch.shape}, {batch.dtype}); got {getattr(out, 'shape', out)}, "
                     f"{getattr(out, 'dtype', '')}. For images, pass image_shape to "
                     "random_shift with functools.partial.")


def project_dictionaries(W: jax.Array) -> jax.Array:
  """Back onto the constraint set: W >= 0 with unit-norm atoms (zero atoms stay zero)."""
  W = jnp.maximum(W, 0)
  norm = jnp.linalg.norm(W, axis=-2, keepdims=True)
  return W / jnp.where(norm > 0, norm, 1)


def _label_indices(cones, y, n):
  y = _checks.check_labels(y, "y", "give each sample one of the cones' classes")
  if y.shape != (n,):
    raise ValueError(f"y must hold one label per row of X, shape ({n},); got {y.shape}.")
  lookup = {label: k for k, label in enumerate(cones.classes)}
  unknown = sorted(set(np.unique(y).tolist()) - set(lookup))
  if unknown:
    raise ValueError(f"labels {unknown[:5]} have no cone; the cones' classes are "
                     f"{list(cones.classes)}. Fit cones for every class first.")
  return np.array([lookup[label] for label in y.tolist()], np.int32)


def _check_operator(cones, A, per_sample_operator):
  """A must be one ``conejax.operators`` operator from the atoms' size m; returns its k."""
  if per_sample_operator:
    raise ValueError("finetune takes one operator A shared by all samples; "
                     "per_sample_operator=True is not supported (per-sample codes are "
                     "solved matrix-free and differentiate only by unrolling). Group the "
                     "samples by operator, or fine-tune on one shared A.")
  if not isinstance(A, operators.LinearOperator):
    raise ValueError(f"A must be a conejax.operators operator; got {type(A).__name__}. "
                     "Wrap a dense matrix with operators.matrix(M).")
  m = cones.W.shape[1]
  if A.in_size != m:
    raise ValueError(f"A maps signals of size {A.in_size}, but the cones' atoms have size "
                     f"{m}; A must map the cones' signals (m,) to the observations (k,).")
  if not operators.is_single(A, cones.W.dtype):
    raise ValueError("A must be one operator shared by all samples (A.mv maps a signal "
                     f"({m},) to ({A.out_size},)); finetune does not take per-sample "
                     "operators.")
  return A.out_size


def _check_data(cones, X, A, name):
  """X as an (N, m) array of samples, or (N, k) observations of A, in the cones' dtype."""
  if A is None:
    X = _cone.check_samples(cones, X)
    _checks.check_ndim(X, name, (2,), "(N, m), samples as rows")
    return X
  X = _checks.as_float_array(X, name)
  if X.ndim != 2 or X.shape[1] != A.out_size:
    raise ValueError(f"{name} must hold observations v = A u as rows, shape (N, "
                     f"{A.out_size}) (A's output size); got {tuple(X.shape)}.")
  _checks.check_finite(X, name)
  return X.astype(cones.W.dtype)


def _split(key, cones, X, labels, validation, A=None):
  """(X_train, labels_train, X_val, labels_val) from a fraction or an explicit pair."""
  if isinstance(validation, tuple) and len(validation) == 2:
    X_val = _check_data(cones, validation[0], A, "validation[0]")
    return X, labels, X_val, _label_indices(cones, validation[1], X_val.shape[0])
  if isinstance(validation, tuple) or not 0 < validation < 1:
    raise ValueError(f"validation must be a fraction in (0, 1) or a pair (X_val, y_val); "
                     f"got {validation!r}.")
  order = np.asarray(jax.random.permutation(key, X.shape[0]))
  n_val = max(1, int(round(validation * X.shape[0])))
  val, train = order[:n_val], order[n_val:]
  return X[train], labels[train], X[val], labels[val]


def finetune(cones: _cone.Cones, X, y, optimizer: optax.GradientTransformation, *,
             steps: int, key: jax.Array, objective: str = "cross_entropy",
             temperature: float = 1.0, tau: float = 0.1, batch_size: int = 256,
             validation=0.1, eval_every: int = 100, patience: int | None = None,
             score: Callable[[_cone.Cones], float] | None = None, solver="auto",
             max_iter: int | None = None, tol: float | None = None,
             differentiation: str = "implicit",
             augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
             A=None, per_sample_operator: bool = False,
             progress: bool = True) -> FinetuneResult:
  """Fine-tunes all class dictionaries at once with an optax optimiser.

  With an operator ``A`` the training samples are observations v = A u and the distances
  are those of ``conejax.distance(cones, V, A=A)``: D_k(v)^2 = ||v - A W_k h_k||^2 with
  h_k = argmin_{h >= 0} 0.5 ||A W_k h - v||^2 + mu_h sum(h), differentiated with respect
  to W through the NNLS on the Gram matrix of A W_k (implicitly, or by unrolling). The
  atoms stay in the signal space (m,), W >= 0 with unit-norm atoms; the validation split
  and the default score are observations through the same A.

  Args:
    cones: starting ``Cones`` (K, m, d), e.g. from ``fit_cones``.
    X: (N, m) training samples, rows; with A, (N, k) observations A u.
    y: (N,) labels, each one of ``cones.classes``.
    optimizer: any ``optax.GradientTransformation``, e.g. ``optax.adam(1e-3)``.
    steps: optimiser steps, each on ``batch_size`` samples drawn without replacement
      (a fresh permutation every epoch).
    key: PRNG key of the validation split and the mini-batches.
    objective: "cross_entropy" (discriminative) or "adversarial" (see the module docstring).
    temperature: of softmax(-D^2 / temperature) in the cross entropy.
    tau: weight of the other classes' distances in the adversarial objective.
    batch_size: samples per step.
    validation: fraction of (X, y) held out, or an explicit pair (X_val, y_val) (with A,
      X_val holds observations through the same A).
    eval_every: steps between evaluations on the validation split.
    patience: stop after this many evaluations without a better score; None runs all steps.
    score: callable cones -> float, higher is better, that selects the cones to return;
      None uses the validation accuracy of ``predict`` (through A when one is given).
    solver, max_iter, tol: the NNLS solver of every step's codes, as in ``conejax.nnls``
      ("auto": exact codes, so the implicit gradient is the exact one).
    differentiation: "implicit" or "unroll" (``max_iter`` APG steps), as in
      ``conejax.nnls``.
    augment: optional jit-compatible ``augment(key, X_batch) -> X_batch`` applied to each
      training batch (B, m) with a fresh key per step, e.g. ``random_shift``; it must keep
      the shape and non-negativity. The validation split is never augmented. With A it
      transforms the observations (B, k).
    A: None (the samples themselves) or one ``conejax.operators`` operator from the cones'
      signals (m,) to the observations (k,), shared by every sample, e.g.
      ``operators.downsample(2, (28, 28))`` or a ``resize`` to another dataset's resolution.
    per_sample_operator: must be False: one operator per sample is not supported here
      (``distance`` takes them; their codes differentiate only by unrolling).
    progress: show a tqdm progress bar.

  Returns:
    ``FinetuneResult`` (cones, history, best_step, seconds); the cones keep the classes,
    the mu_h and the settings of the input, with the fine-tuning recorded.

  Raises:
    ValueError: on labels without a cone, a bad validation split, non-positive
      temperature, tau < 0, bad sizes and options, cones of a beta-divergence, or an
      operator A that is not one ``conejax.operators`` operator from (m,) to X's (k,).

  Example:
    >>> import jax, numpy as np, optax, conejax
    >>> from conejax import operators
    >>> rng = np.random.default_rng(0)
    >>> cones = conejax.make_cones(rng.random((2, 16, 2)))      # 4 x 4 signals, 2 classes
    >>> A = operators.downsample(2, (4, 4))                    # seen as 2 x 2 observations
    >>> V, y = rng.random((40, 4)), rng.integers(0, 2, 40)
    >>> out = conejax.finetune(cones, V, y, optax.adam(1e-2), steps=5, key=jax.random.key(0),
    ...                        batch_size=8, A=A, progress=False)
    >>> out.cones.W.shape                                      # atoms stay 4 x 4
    (2, 16, 2)
  """
  _checks.require_concrete("finetune", "Fine-tune outside jit; write your own jitted step "
                           "from conejax's losses if you need one.", X=X, y=y, W=cones.W)
  beta = _cone.beta_of(cones, None)
  if beta != 2:
    raise ValueError(f"finetune differentiates the Frobenius projection, and these cones "
                     f"code under beta_loss {beta:g} (their settings' beta_loss), whose "
                     "multiplicative updates are not differentiable. Fit them with "
                     "beta_loss='frobenius', or fine-tune conejax.make_cones(cones.W, "
                     "cones.mu_h, cones.classes) (the same atoms, coded by least squares).")
  _checks.check_choice(objective, "objective", OBJECTIVES)
  steps = _checks.check_positive_int(steps, "steps")
  batch_size = _checks.check_positive_int(batch_size, "batch_size")
  eval_every = _checks.check_positive_int(eval_every, "eval_every")
  # Through A, "auto" weighs the atoms against A's k observations (as ``distance`` does).
  n_features = (None if A is None and not per_sample_operator
                else _check_operator(cones, A, per_sample_operator))
  solver, _ = _nnls.check_options(solver, max_iter=max_iter, tol=tol, batch_size=batch_size,
                                  differentiation=differentiation, n_atoms=cones.W.shape[-1],
                                  n_features=n_features)
  if not float(temperature) > 0:
    raise ValueError(f"temperature must be > 0; got {temperature}.")
  tau = float(_checks.check_penalty(tau, "tau"))
  X = _check_data(cones, X, A, "X")
  labels = _label_indices(cones, y, X.shape[0])
  split_key, batch_key = jax.random.split(key)
  augment_key = jax.random.fold_in(split_key, 1)
  X, labels, X_val, labels_val = _split(split_key, cones, X, labels, validation, A)
  labels = jnp.asarray(labels)
  if X.shape[0] < batch_size:
    raise ValueError(f"batch_size {batch_size} exceeds the {X.shape[0]} training samples "
                     "left after the validation split; lower batch_size.")
  if augment is not None:
    _check_augment(augment, augment_key, X[:batch_size])
  options = dict(solver=solver, differentiation=differentiation)
  weight = jnp.asarray(temperature if objective == "cross_entropy" else tau, X.dtype)
  loss_fn = functools.partial(objective_loss, objective, weight=weight)
  static = dict(objective=objective, options=tuple(sorted(options.items())),
                meta=None if A is None else (cones.classes, cones.settings))

  @jax.jit
  def augmented(X_batch, step):
    return augment(jax.random.fold_in(augment_key, step), X_batch)

  @jax.jit
  def apply_step(W, opt_state, grad):
    updates, opt_state = optimizer.update(grad, opt_state, W)
    return project_dictionaries(optax.apply_updates(W, updates)), opt_state

  def train_step(W, opt_state, X, labels, index, step):
    X_batch = X[index] if augment is None else augmented(X[index], step)
    loss, grad = _loss_and_grad(W, X_batch, labels[index], cones.mu_h, weight, A, **static)
    return (*apply_step(W, opt_state, grad), loss)

  def evaluate(W, step):
    if not np.all(np.isfinite(np.asarray(W))):
      raise ValueError(f"finetune diverged: the dictionaries hold NaN or Inf after step {step} "
                       "(the optimiser's update was not finite); lower the learning rate and "
                       "check that it is a finite number.")
    tuned = _cone.Cones(W, cones.mu_h, cones.classes, cones.settings)
    D2 = _cone.distance(tuned, X_val, A=A, solver=solver) ** 2
    val_loss = float(loss_fn(D2, labels_val))
    if score is not None:
      return val_loss, float(score(tuned))
    return val_loss, float(np.mean(np.asarray(jnp.argmin(D2, -1)) == np.asarray(labels_val)))

  start = time.perf_counter()
  W = project_dictionaries(cones.W)
  opt_state = optimizer.init(W)
  val_loss, val_score = evaluate(W, 0)
  records = [(0, np.nan, val_loss, val_score)]
  best_W, best_step, best_score, waited = W, 0, val_score, 0
  per_epoch = X.shape[0] // batch_size
  losses, order = [], None
  bar = tqdm(range(1, steps + 1), desc=f"finetune ({objective})", unit="step",
             disable=not progress)
  for step in bar:
    if (step - 1) % per_epoch == 0:
      batch_key, subkey = jax.random.split(batch_key)
      order = jax.random.permutation(subkey, X.shape[0])
    position = (step - 1) % per_epoch * batch_size
    W, opt_state, loss = train_step(W, opt_state, X, labels, order[position:position + batch_size],
                                    step)
    losses.append(loss)
    if step % eval_every and step != steps:
      continue
    val_loss, val_score = evaluate(W, step)
    records.append((step, float(np.mean(jnp.stack(losses))), val_loss, val_score))
    losses = []
    bar.set_postfix(val_loss=f"{val_loss:.4g}", val_score=f"{val_score:.4f}")
    if val_score > best_score:
      best_W, best_step, best_score, waited = W, step, val_score, 0
    else:
      waited += 1
      if patience is not None and waited >= patience:
        break
  bar.close()
  history = FinetuneHistory(*(np.asarray(column) for column in zip(*records)))
  settings = dict(cones.settings, finetune=objective, finetune_steps=best_step)
  tuned = _cone.make_cones(best_W, cones.mu_h, cones.classes, settings)
  return FinetuneResult(tuned, history, best_step, time.perf_counter() - start)
