"""Scale-out with ``jax.sharding``: samples split over devices, no communication layer of ours.

Samples are rows: U is (N, m), a dictionary W is (m, d) with atoms as columns, codes H are
(N, d) and U ~ H W^T; ``Cones`` stack K dictionaries as W (K, m, d). A mesh from
``make_mesh`` has two axes: "classes" (dictionaries) and "data" (rows of the batch).

NMF is data-parallel. Each device holds N / n_data rows of U and H and a copy of W. The
update of H is row by row (``mu_update``, ``hals_update``), so it needs no communication;
the update of W needs only A = U^T H (m, d) and B = H^T H (d, d), sums over rows. One
``lax.psum`` per iteration, inside ``jax.shard_map``, sums (A, B, sum(H)) over "data";
every device then takes the same W step, and the objective follows from the same
statistics (``objective_from_stats``). The iterates are those of ``conejax.nmf`` up to the
rounding of the sums. ``nmf_per_class_sharded`` does the same for every class at once on
a 2-D mesh: classes over "classes", each class's rows over "data".

Projection, classification and reconstruction treat every sample on its own, so each
device runs the unchanged single-device function on its rows (``jax.shard_map``, no
communication; ``distance_sharded`` also splits the cones over "classes"). Passing
row-sharded arrays into ``conejax.distance`` (GSPMD) also gives the same distances
(max relative gap 1.7e-7 on 4,000 MNIST images, 8 host devices), but it partitions the
solver's convergence test into an all-reduce every iteration and reshards the batch
where the solver cuts it into chunks; under shard_map each device's rows are their own
batch, so a sample may stop after a different number of solver iterations than on one
device, and results agree to the solver tolerance rather than to the last bit. The
existing solvers are not written for shard_map's replication checks (their loops start
from replicated zeros), so those calls pass ``check_vma=False``.

Meshes use ``AxisType.Auto``: with explicit axes (``jax.make_mesh``'s default in current
JAX) the batch reshapes inside the solvers raise a ShardingTypeError. Batches whose size
is not a multiple of the devices are padded here (NMF: zero rows, masked out of every
statistic; projections: copies of the last row) and the padding is cut off the results.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from conejax import _checks, _cone, _inverse, _nmf, _nmf_checks, _nmf_init

AXES = ("classes", "data")
_METHODS = ("mu", "hals")
_ROWS, _CLASS_ROWS = P("data"), P("classes", "data")


def make_mesh(n_data: int | None = None, *, n_classes: int = 1, devices=None) -> Mesh:
  """A (n_classes, n_data) device mesh with axes ("classes", "data").

  Args:
    n_data: devices along "data" (rows of a batch); None uses every device left after
      ``n_classes``.
    n_classes: devices along "classes" (dictionaries, for per-class NMF and distances).
    devices: the devices to use; None is ``jax.devices()``, which after
      ``jax.distributed.initialize()`` lists the devices of every host.

  Returns:
    ``jax.sharding.Mesh`` with ``AxisType.Auto`` axes.

  Raises:
    ValueError: when fewer devices are available than the mesh needs.

  Example:
    >>> import conejax
    >>> conejax.make_mesh().axis_names
    ('classes', 'data')
  """
  devices = jax.devices() if devices is None else list(devices)
  n_classes = _checks.check_positive_int(n_classes, "n_classes")
  if n_data is None and n_classes > len(devices):
    raise ValueError(
        f"n_classes={n_classes} needs at least {n_classes} devices but {len(devices)} are "
        "available; lower n_classes, or on CPU set XLA_FLAGS=--xla_force_host_platform_"
        f"device_count={n_classes} before JAX is imported.")
  n_data = len(devices) // n_classes if n_data is None else n_data
  n_data = _checks.check_positive_int(n_data, "n_data")
  if n_classes * n_data > len(devices):
    raise ValueError(
        f"a {n_classes} x {n_data} mesh needs {n_classes * n_data} devices but {len(devices)} "
        "are available; use fewer, or on CPU set XLA_FLAGS=--xla_force_host_platform_device_"
        f"count={n_classes * n_data} before JAX is imported.")
  return jax.make_mesh((n_classes, n_data), AXES, (AxisType.Auto,) * 2,
                       devices=devices[:n_classes * n_data])


def _check_mesh(mesh):
  if not isinstance(mesh, Mesh) or tuple(mesh.axis_names) != AXES:
    names = getattr(mesh, "axis_names", type(mesh).__name__)
    raise ValueError(f"mesh must be a jax.sharding.Mesh with axes {AXES}; got {names}. "
                     "Build one with conejax's make_mesh.")
  return mesh.shape["classes"], mesh.shape["data"]


def shard_samples(X, mesh: Mesh) -> jax.Array:
  """Places the rows of X (N, ...) over the "data" axis, replicated over "classes".

  Raises:
    ValueError: if N is not a multiple of the "data" axis size (the ``*_sharded``
      functions pad for you), or the mesh lacks the ("classes", "data") axes.
  """
  n_data = _check_mesh(mesh)[1]
  X = X if isinstance(X, jax.Array) else np.asarray(X)  # host data goes to each device directly
  if X.ndim < 1 or X.shape[0] % n_data:
    n = X.shape[0] if X.ndim else 0
    raise ValueError(
        f"X has {n} rows, not a multiple of the {n_data} devices on mesh axis 'data'; pad "
        f"it by {-n % n_data} rows (e.g. np.pad(X, [(0, {-n % n_data})] + [(0, 0)] * "
        "(X.ndim - 1), mode='edge')) and cut them off the results.")
  return jax.device_put(X, NamedSharding(mesh, _ROWS))


def _pad_rows(x, n_rows, mode):
  """x (n, ...) with rows appended up to n_rows: zeros, or copies of the last ("edge")."""
  return jnp.pad(x, [(0, n_rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1), mode=mode)


def _sum_over_data(x):
  """The all-reduce that completes a sum over rows: one ``psum`` over the "data" axis."""
  return lax.psum(x, "data")


def _fit_rows(U, mask, W, H, mu_w, mu_h, weights, **static):
  """The NMF core on this device's rows of U (n, m), H (n, d) and the weights, W (m, d)
  replicated: its sums over rows (A = U^T H, B = H^T H, sum(H)) are psums over "data"."""
  return _nmf.fit_factors(U, mask, W, H, mu_w, mu_h, weights=weights, reduce=_sum_over_data,
                          **static)


@functools.partial(jax.jit,
                   static_argnames=("mesh", "per_class", "n_fixed") + _nmf._STATIC)
def _fit_sharded(U, mask, W0, H0, mu_w, mu_h, weights=None, *, mesh, per_class, **static):
  """``_fit_rows`` under shard_map; with ``per_class`` every array has a leading (K,) axis.

  ``weights`` (entry weights of U, or None) are split with U.
  """
  static.setdefault("unit_atoms", False)
  fit = functools.partial(_fit_rows, **static)
  rows, single = (_CLASS_ROWS, P("classes")) if per_class else (_ROWS, P())
  if per_class:  # one penalty per class (each class at its own unit scale)
    fit = jax.vmap(fit)
  specs = (rows, rows, single, rows, single, single, rows if weights is not None else P())
  return jax.shard_map(fit, mesh=mesh, in_specs=specs,
                       out_specs=(single, rows, single, single))(U, mask, W0, H0, mu_w, mu_h,
                                                                 weights)


@functools.partial(jax.jit, static_argnames=("init", "rank", "per_class"))
def _init_factors(key, U, mask, weights, fixed, *, init, rank, per_class):
  def init_fn(key, U, mask, weights):
    W, H = _nmf_init.INITS[init](key, _nmf_init.fill_missing(U, weights, mask), rank, mask)
    return _nmf_init.with_fixed_atoms(U, W, H, fixed, mask)
  return (jax.vmap(init_fn) if per_class else init_fn)(key, U, mask, weights)


def _check_method(method):
  if method is not None and method not in _METHODS:
    raise ValueError(f"method must be one of {_METHODS} for sharded NMF (row-wise updates of H, "
                     f"one all-reduce per iteration); got {method!r}. Use conejax.nmf for it.")
  return method


def nmf_sharded(U, rank: int, *, key: jax.Array, mesh: Mesh, mu_w=0.0, mu_h=0.0,
                method: str | None = None, init="nndsvda", max_iter: int = 200,
                tol: float = 1e-5, inner_iter: int | None = None, beta_loss="frobenius",
                weights=None, missing: str | None = None, fixed_atoms=None) -> _nmf.NMFResult:
  """``conejax.nmf`` with the rows of U and H split over the mesh axis "data".

  Minimises D_beta(U | H W^T) + mu_w |W|_1 + mu_h |H|_1 over W, H >= 0 (the Frobenius loss
  0.5 ||U - H W^T||_F^2 by default) by the same core as ``conejax.nmf``; W is replicated
  and the sums over rows go through one all-reduce per iteration (of U^T H, H^T H and
  sum(H) for the Frobenius loss; two, W's statistics and the objective, for a
  beta-divergence or weights). Rows are padded with zeros to a multiple of the "data" size
  and masked out; over "classes" the work is replicated.

  Args:
    U: (N, m) non-negative data, samples as rows.
    rank: number of atoms d, as in ``conejax.nmf``.
    key: PRNG key of the initialisation.
    mesh: from ``make_mesh``.
    method: "mu" or "hals" ("anls" needs ``conejax.nmf``); None as in ``conejax.nmf``.
    init: "random", "nndsvda", "kmeans" (computed as ``conejax.nmf`` does, on one device,
      before U is padded and split), or a pair (W0 (m, d), H0 (N, d0 + d)).
    Other arguments: as in ``conejax.nmf`` (weights are split with U's rows).

  Returns:
    ``NMFResult`` with ``W`` (m, d0 + d), ``H`` (N, d0 + d), ``objective`` (max_iter,),
    ``n_iter``; equal to ``conejax.nmf`` from the same init up to rounding.

  Raises:
    ValueError: as ``conejax.nmf``, plus a mesh without ("classes", "data") axes.
  """
  n_data = _check_mesh(mesh)[1]
  p = _nmf_checks.check_nmf(U, rank, init, _check_method(method), max_iter, tol, inner_iter, mu_w,
                      mu_h, beta_loss=beta_loss, weights=weights, missing=missing,
                      fixed_atoms=fixed_atoms)
  s, U, mu_w, mu_h, H0 = _nmf.unit_scale(p.U, p.mu_w, p.mu_h, p.H0, beta=p.beta,
                                         weights=p.weights)
  n = U.shape[0]
  if p.init is not None:
    W0, H0 = _init_factors(key, U, jnp.ones(n, U.dtype), p.weights, p.fixed, init=p.init,
                           rank=p.rank, per_class=False)
  else:
    W0 = p.W0 if p.fixed is None else jnp.concatenate([p.fixed, p.W0], axis=1)
  # Zero rows of U with zero codes (and zero weights) stay zero and add nothing to any sum.
  pad = lambda x: shard_samples(_pad_rows(x, n + (-n % n_data), "constant"), mesh)
  U, mask, H0 = pad(U), pad(jnp.ones(n, U.dtype)), pad(H0)
  weights = None if p.weights is None else pad(p.weights)
  W, H, history, n_iter = _fit_sharded(
      U, mask, W0, H0, mu_w, mu_h, weights, mesh=mesh, per_class=False, method=p.method,
      max_iter=p.max_iter, tol=p.tol, inner=p.inner, beta=p.beta,
      n_fixed=0 if p.fixed is None else p.fixed.shape[1])
  return _nmf.NMFResult(*_nmf.rescale(s, W, H[:n], history, n_iter, beta=p.beta))


def nmf_per_class_sharded(X, y, rank: int, *, key: jax.Array, mesh: Mesh, mu_w=0.0, mu_h=0.0,
                          method: str | None = None, init: str = "nndsvda", max_iter: int = 200,
                          tol: float = 1e-5, inner_iter: int | None = None,
                          beta_loss="frobenius", weights=None, missing: str | None = None,
                          fixed_atoms=None) -> _nmf.NMFResult:
  """``conejax.nmf_per_class`` with classes over "classes" and each class's rows over "data".

  Classes are padded to the largest one (as ``nmf_per_class`` does), initialised on one
  device, then padded to a multiple of the "data" size; the class count is padded to a
  multiple of the "classes" size with copies of the last class, whose results are dropped.
  One all-reduce over "data" per iteration serves all the classes a device holds.

  Args:
    X: (N, m) non-negative data, samples as rows.
    y: (N,) class labels.
    rank: atoms per class.
    key: PRNG key; class k starts from ``jax.random.split(key, K)[k]``, as in
      ``nmf_per_class``.
    mesh: from ``make_mesh``.
    method: "mu" or "hals".
    Other arguments: as in ``conejax.nmf_per_class``.

  Returns:
    ``NMFResult`` with ``W`` (K, m, d0 + d), ``H`` (N, d0 + d), ``objective`` (K, max_iter),
    ``n_iter`` (K,) and ``classes`` (K,), equal to ``nmf_per_class`` up to rounding.

  Raises:
    ValueError: as ``conejax.nmf_per_class``, plus a mesh without ("classes", "data") axes.
  """
  n_classes, n_data = _check_mesh(mesh)
  p, (classes, index, mask) = _nmf_checks.check_per_class(
      X, y, rank, init, _check_method(method), max_iter, tol, inner_iter, mu_w, mu_h,
      beta_loss=beta_loss, weights=weights, missing=missing, fixed_atoms=fixed_atoms)
  K = len(classes)
  index, mask = (np.pad(x, [(0, -K % n_classes), (0, 0)], mode="edge") for x in (index, mask))
  keys = jax.random.split(key, K)
  keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], len(index) - K, axis=0)])
  mask = jnp.asarray(mask, p.U.dtype)
  U = p.U[index] * mask[..., None]
  weights = None if p.weights is None else p.weights[index] * mask[..., None]
  s, U, mu_w, mu_h = _nmf.unit_scale_per_class(U, p.mu_w, p.mu_h, beta=p.beta,
                                                weights=weights)
  W0, H0 = _init_factors(keys, U, mask, weights, p.fixed, init=p.init, rank=p.rank,
                         per_class=True)
  rows = lambda x: [(0, 0), (0, -x.shape[1] % n_data)] + [(0, 0)] * (x.ndim - 2)
  place = lambda x: None if x is None else jax.device_put(jnp.pad(x, rows(x)),
                                                          NamedSharding(mesh, _CLASS_ROWS))
  U, mask_x, H0, weights = (place(x) for x in (U, mask, H0, weights))
  W, H, history, n_iter = _fit_sharded(
      U, mask_x, W0, H0, mu_w, mu_h, weights, mesh=mesh, per_class=True, method=p.method,
      max_iter=p.max_iter, tol=p.tol, inner=p.inner, beta=p.beta,
      n_fixed=0 if p.fixed is None else p.fixed.shape[1])
  index, mask = index[:K], np.asarray(mask[:K], bool)
  H = H[:K, :mask.shape[1]]  # each class's real rows; the rest is padding
  s = s[:K]
  codes = _nmf.scatter_codes(H, s, index, mask, p.U.shape[0])
  history = (history[:K] * s[:, None] * s[:, None] if p.beta == 2
             else history[:K] * s[:, None] ** p.beta)
  return _nmf.NMFResult(W[:K], codes, history, n_iter[:K], classes)


@functools.partial(jax.jit, static_argnames=("fn", "mesh", "specs", "options"))
def _map_blocks(*args, fn, mesh, specs, options):
  """fn(*blocks, **options) on every device's blocks of args, with no communication."""
  body = lambda *blocks: fn(*blocks, **dict(options))
  return jax.shard_map(body, mesh=mesh, in_specs=specs[0], out_specs=specs[1],
                       check_vma=False)(*args)


def _cone_distances(W, mu_h, X, **options):
  return _cone.distance(_cone.Cones(W, mu_h), X, **options)


def distance_sharded(cones: _cone.Cones, X, mesh: Mesh, **options) -> jax.Array:
  """``conejax.distance`` with rows over "data" and the cones over "classes": (N, K).

  Args:
    cones: ``Cones`` with W (K, m, d); K is padded to a multiple of the "classes" size.
    X: (N, m) samples as rows.
    mesh: from ``make_mesh``.
    **options: ``max_iter``, ``tol``, ``batch_size`` as in ``conejax.nnls``; ``beta_loss``
      as in ``conejax.distance`` (None, the default: the cones' own loss).

  Returns:
    (N, K) distances D_k(x), sharded over the mesh.

  Raises:
    ValueError: on X not (N, m), non-finite X, or a mesh without ("classes", "data") axes.
  """
  n_classes, n_data = _check_mesh(mesh)
  X = _cone.check_samples(cones, X)
  _checks.check_ndim(X, "X", (2,), "(N, m), samples as rows")
  (n, _), K = X.shape, cones.n_classes
  W = _pad_rows(cones.W, K + (-K % n_classes), "edge")
  X = shard_samples(_pad_rows(X, n + (-n % n_data), "edge"), mesh)
  specs = ((P("classes"), P(), _ROWS), P("data", "classes"))
  # The blocks are plain Cones: the loss the cones code under (their own by default) is
  # passed explicitly, so KL cones are KL cones here too.
  options["beta_loss"] = _cone.beta_of(cones, options.get("beta_loss"))
  out = _map_blocks(W, cones.mu_h, X, fn=_cone_distances, mesh=mesh, specs=specs,
                    options=tuple(sorted(options.items())))
  return out[:n, :K]


def predict_sharded(cones: _cone.Cones, X, mesh: Mesh, **options) -> np.ndarray:
  """``conejax.predict`` from ``distance_sharded``: the nearest cone's label, (N,) numpy."""
  distances = distance_sharded(cones, X, mesh, **options)
  return np.asarray(cones.classes)[np.asarray(jnp.argmin(distances, axis=-1))]


def _reconstruct_block(dictionary, V, A, mu_h, **options):
  return _inverse.reconstruct(dictionary, V, A, mu_h=mu_h, **options)


def reconstruct_sharded(dictionary, V, mesh: Mesh, A=None, *, mu_h=None,
                        per_sample_operator: bool = False, **options) -> _inverse.Reconstruction:
  """``conejax.reconstruct`` with the observations' rows over "data".

  Args:
    dictionary: ``Cones``, or W of shape (m, d) or (K, m, d); replicated.
    V: (N, k) observations, samples as rows.
    mesh: from ``make_mesh``.
    A: operator (``conejax.operators``) or None (identity); with ``per_sample_operator``
      its leaves' leading N axis is split with V.
    mu_h: L1 weight of the codes >= 0; None takes the cones' own (0 for an array).
    **options: ``loss``, ``select``, ``max_iter``, ``tol``, ``batch_size``, ``chunk_size``
      as in ``conejax.reconstruct``.

  Returns:
    ``Reconstruction`` whose fields have a leading (N,) axis, as ``conejax.reconstruct``.

  Raises:
    ValueError: as ``conejax.reconstruct``, plus V not 2-D or a bad mesh.
  """
  n_data = _check_mesh(mesh)[1]
  V = _checks.as_float_array(V, "V")
  _checks.check_ndim(V, "V", (2,), "(N, k), samples as rows")
  _checks.check_finite(V, "V")
  if mu_h is not None:
    mu_h = _checks.check_penalty(mu_h, "mu_h")
  n = V.shape[0]
  pad = lambda x: shard_samples(_pad_rows(x, n + (-n % n_data), "edge"), mesh)
  V = pad(V)
  if per_sample_operator:
    A = jax.tree.map(pad, A)
  specs = ((P(), _ROWS, _ROWS if per_sample_operator else P(), P()), _ROWS)
  options = dict(options, per_sample_operator=bool(per_sample_operator))
  out = _map_blocks(dictionary, V, A, mu_h, fn=_reconstruct_block, mesh=mesh, specs=specs,
                    options=tuple(sorted(options.items())))
  return jax.tree.map(lambda x: x[:n], out)
