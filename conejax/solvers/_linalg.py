"""Batched solves of G_SS x_S = q_S on a per-sample support S, with static shapes.

Every sample n of a batch has its own support S_n (a boolean row of length d) and the
system is G restricted to it, G shared by all samples. Rather than the masked d x d
system D G D + (I - D) per sample, the support is gathered into a system of bounded size
P >= |S_n| (padded with the identity, which decouples the padding exactly).

Rows are sorted by the size of their support into buckets (``plan``) and each bucket is
compacted into blocks of its own rows, so the work is that of the rows asked for (``rows``:
the active-set solver re-solves only its unfinished samples), each at the size of its own
support. Supports of at most UNROLLED = 16 variables (nearly all of them on sparse problems)
are factorised by a Cholesky written out entry by entry on samples-last (P, P, n) arrays,
which XLA turns into a few vector loops over the samples (100,000 16 x 16 systems in 23 ms
on a 2-core CPU, against 220 ms for LAPACK's batched ``potrf``), UNROLLED_BLOCK rows at a
time (a chunk of 2048 in one pass). Larger supports are solved first by conjugate
gradients on the masked system (one product with the shared G per iteration, the fast
operation of XLA:CPU) in blocks of CG_BLOCK rows, each row to a true residual within
``residual_bound`` (the worst-case rounding error of G x - q; relative objective gaps to
scipy's NNLS of at most 2e-8 in float32 on random 150 x 40 problems of cond 1e2 to 1e6,
where the Cholesky gives 6e-11) in at most CG_MAX_ITER iterations: 10000 MNIST digits on a rank-64 NMF
dictionary, supports of 17 to 54 atoms, in 30% of the looped Cholesky's time. The rows CG
leaves (ill-conditioned G_SS) go to the smallest size of ``sizes(d)`` (steps of about
1.4x) that holds them, solved by a Cholesky looped over columns. (LAPACK's ``potrf`` there
deadlocked XLA:CPU inside the loop, and so did a ``lax.cond`` holding the loop under
``vmap``, with jax 0.10.2: neither is used; a blocked Cholesky over the unrolled kernel
measured 2x slower than the loop.) A pivot at or below ``ridge`` (a singular G_SS, as in a
union of cones whose atoms repeat) is replaced by ``ridge``: a ridge only where needed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

HIGHEST = lax.Precision.HIGHEST

UNROLLED = 16
_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


def sizes(d: int) -> tuple[int, ...]:
  """The system sizes tried for d variables: 16, 24, 32, 48, ... below d, and d itself."""
  return tuple(s for s in _LADDER if s < d) + (d,)


def default_ridge(G: jax.Array) -> jax.Array:
  """10 eps times the largest diagonal entry of G: a rounding-level regulariser."""
  return 10 * jnp.finfo(G.dtype).eps * jnp.maximum(jnp.max(jnp.diag(G)),
                                                   jnp.finfo(G.dtype).tiny)


def gather_indices(mask, size):
  """The first ``size`` indices where the (n,) bool ``mask`` is true, ascending, and which
  of them are real (the rest are padding): the compaction of the rows it marks."""
  index, valid = _gather(mask[None], size)
  return index[0], valid[0]


def _gather(support, P):
  """The first P indices of each support row, ascending, and which of them are real.

  A scatter of each index to its rank in the row (a cumulative sum); 14x faster on CPU
  than ``lax.top_k`` over the row.
  """
  n, d = support.shape
  rank = jnp.where(support, jnp.cumsum(support, axis=-1) - 1, P)
  columns = jnp.broadcast_to(jnp.arange(d, dtype=jnp.int32), support.shape)
  index = jnp.zeros((n, P), jnp.int32).at[jnp.arange(n)[:, None], rank].set(
      columns, mode="drop")
  valid = jnp.arange(P)[None] < jnp.sum(support, axis=-1, keepdims=True)
  return index, valid


def _cholesky_solve_unrolled(A, b, ridge):
  """Solves A x = b for samples-last A (P, P, n) (lower triangle read), b (P, n)."""
  P = b.shape[0]
  A = [[A[i, j] for j in range(i + 1)] for i in range(P)]
  L = [[None] * P for _ in range(P)]
  for j in range(P):
    pivot = A[j][j]
    pivot = jnp.where(pivot > ridge, pivot, ridge)
    root = jnp.sqrt(pivot)
    inverse = 1 / root
    L[j][j] = root
    for i in range(j + 1, P):
      L[i][j] = A[i][j] * inverse
    for i in range(j + 1, P):
      for k in range(j + 1, i + 1):
        A[i][k] = A[i][k] - L[i][j] * L[k][j]
  y = [None] * P
  for i in range(P):
    s = b[i]
    for k in range(i):
      s = s - L[i][k] * y[k]
    y[i] = s / L[i][i]
  x = [None] * P
  for i in reversed(range(P)):
    s = y[i]
    for k in range(i + 1, P):
      s = s - L[k][i] * x[k]
    x[i] = s / L[i][i]
  return jnp.stack(x)


def _cholesky_solve_looped(A, b, ridge):
  """Solves A x = b for (n, P, P) A, (n, P) b by a column-by-column Cholesky in a loop.

  A pivot at or below ``ridge`` becomes ``ridge``.
  """
  n, P = b.shape
  index = jnp.arange(P)

  def factor(j, L):
    # Left-looking: column j of L from the columns before it (masked to k < j).
    row_j = jnp.where(index[None] < j, L[:, j, :], 0)                     # (n, P)
    column = A[:, :, j] - jnp.einsum("nik,nk->ni", L, row_j)              # (n, P)
    pivot = column[:, j]
    root = jnp.sqrt(jnp.where(pivot > ridge, pivot, ridge))
    column = jnp.where(index[None] > j, column / root[:, None],
                       jnp.where(index[None] == j, root[:, None], 0))
    return L.at[:, :, j].set(column)

  L = lax.fori_loop(0, P, factor, jnp.zeros_like(A))
  y = jax.scipy.linalg.solve_triangular(L, b[..., None], lower=True)
  return jax.scipy.linalg.solve_triangular(L, y, lower=True, trans=1)[..., 0]


def _gathered(G, Q, support, ridge, P, looped):
  """The systems of ``support`` gathered to size P (rows whose support exceeds P are cut)."""
  n, d = Q.shape
  index, valid = _gather(support, P)
  rows = jnp.arange(n)[:, None]
  q = jnp.where(valid, Q[rows, index], 0)
  if looped:
    A = G[index[:, :, None], index[:, None, :]]
    A = jnp.where(valid[:, :, None] & valid[:, None, :], A, jnp.eye(P, dtype=G.dtype)[None])
    x = _cholesky_solve_looped(A, q, ridge)
  else:
    # Samples-last: every entry of the small systems is a vector over the batch.
    It, Vt = index.T, valid.T
    A = G[It[:, None, :], It[None, :, :]]                      # (P, P, n)
    eye = jnp.eye(P, dtype=G.dtype)[:, :, None]
    A = jnp.where(Vt[:, None, :] & Vt[None, :, :], A, eye)
    x = _cholesky_solve_unrolled(A, q.T, ridge).T
  x = jnp.where(valid, x, 0)
  return jnp.zeros_like(Q).at[rows, index].add(x)


def plan(d: int) -> tuple[tuple[int, bool, int], ...]:
  """The buckets (size P, looped, rows per block) for supports of d variables.

  Supports of at most UNROLLED variables go to the unrolled kernel (UNROLLED_BLOCK rows at a
  time); a larger one goes to the smallest size of ``sizes(d)`` that holds it, so a row
  pays for its own support, not for its block's largest (a 33-variable support is solved at
  48, not at 64; 3.2x faster on MNIST NMF codes than one size per block).
  """
  small = min(UNROLLED, d)
  buckets = [(small, False, UNROLLED_BLOCK)]
  buckets += [(P, True, OVERFLOW_BLOCK) for P in sizes(d) if P > small]
  return tuple(buckets)


def _solve_bucket(G, Q, support, ridge, x, todo, P, looped, block):
  """Solves the rows marked ``todo`` into x, compacted ``block`` rows at a time."""
  n = Q.shape[0]
  # Always the loop, also for a single block: solved directly (no loop) under vmap with a
  # per-sample G, XLA:CPU deadlocked at its default flags (jax 0.10.2; conejax.compress).
  block = min(block, n)

  def body(carry):
    x, todo = carry
    rows, valid = gather_indices(todo, block)
    # Padding entries point past the end: dropped on write, so no duplicate row can
    # overwrite a fresh solution.
    rows = jnp.where(valid, rows, n)
    read = jnp.minimum(rows, n - 1)
    sub = support[read] & valid[:, None]
    solved = _gathered(G, Q[read], sub, ridge, P, looped)
    return x.at[rows].set(solved, mode="drop"), todo.at[rows].set(False, mode="drop")

  return lax.while_loop(lambda c: jnp.any(c[1]), body, (x, todo))[0]


# Supports above UNROLLED are solved first by conjugate gradients on the masked system,
# CG_BLOCK rows at a time, up to CG_MAX_ITER iterations; a row whose true residual is then
# above the rounding bound (CG_TOL) goes to the looped Cholesky.
CG_BLOCK = 128
CG_ABOVE = UNROLLED
CG_MAX_ITER = 32
CG_PASS = 4     # iterations per pass of the loop (XLA:CPU copies the carry once a pass)
CG_TOL = 4
CG_STOP = 0.25  # the recurrence's residual stops at this fraction of the bound


def residual_bound(G, Q, x):
  """CG_TOL eps (||q||_inf + max diag(G) ||x||_1) per row: the size of the rounding error of
  G x - q, below which a residual is zero to working precision."""
  eps = jnp.finfo(Q.dtype).eps
  return CG_TOL * eps * (jnp.max(jnp.abs(Q), axis=-1) + jnp.max(jnp.diag(G)) *
                         jnp.sum(jnp.abs(x), axis=-1))


def _conjugate_gradient(G, Q, support):
  """x with G_SS x_S = q_S on each row's support S by CG from zero, and whether its true
  residual is within ``residual_bound``. Each row stops at its own convergence (frozen
  after), so its result does not depend on the rest of the block. (From zero, not from a
  nearby point such as the warm start's iterate, which halves the iterations on MNIST: that
  point carries the batch-dependent rounding of the products that made it, and CG would
  carry it into the answer.)"""
  mask = support.astype(Q.dtype)
  x = jnp.zeros_like(Q)
  r = Q * mask
  rr = jnp.sum(r * r, axis=-1)
  done = jnp.max(jnp.abs(r), axis=-1) <= CG_STOP * residual_bound(G, Q, x)

  def iteration(_, carry):
    x, r, p, rr, done = carry
    Ap = jnp.matmul(p, G, precision=HIGHEST) * mask
    pAp = jnp.sum(p * Ap, axis=-1)
    alpha = jnp.where(pAp > 0, rr / jnp.where(pAp > 0, pAp, 1), 0)[:, None]
    x_new, r_new = x + alpha * p, r - alpha * Ap
    rr_new = jnp.sum(r_new * r_new, axis=-1)
    beta = jnp.where(rr > 0, rr_new / jnp.where(rr > 0, rr, 1), 0)[:, None]
    p_new = r_new + beta * p
    # the recurrence's residual below CG_STOP of the bound; the true one is checked at the end
    done_new = jnp.max(jnp.abs(r_new), axis=-1) <= CG_STOP * residual_bound(G, Q, x_new)
    keep = done[:, None]
    return (jnp.where(keep, x, x_new), jnp.where(keep, r, r_new), jnp.where(keep, p, p_new),
            jnp.where(done, rr, rr_new), done | done_new)

  def body(carry):
    it, state = carry
    return it + CG_PASS, lax.fori_loop(0, CG_PASS, iteration, state, unroll=True)

  carry = (jnp.zeros((), jnp.int32), (x, r, r, rr, done))
  _, (x, *_) = lax.while_loop(lambda c: (c[0] < CG_MAX_ITER) & ~jnp.all(c[1][4]), body, carry)
  true = (Q - jnp.matmul(x, G, precision=HIGHEST)) * mask
  return x, jnp.max(jnp.abs(true), axis=-1) <= residual_bound(G, Q, x)


def _cg_bucket(G, Q, support, x, todo, block):
  """CG on the rows marked ``todo``, ``block`` rows at a time: (x, the rows it solved).

  Always in blocks of exactly ``block`` rows (padded), also for fewer rows: XLA:CPU picks
  its matrix-product kernel by the number of rows (rows of a 40-column product differed by
  1e-6 between 17 and 64 rows), and CG carries such rounding into its answer (times the
  conditioning of G_SS), while in a product of fixed shape a row's result is bitwise the
  same wherever it sits and whatever its neighbours: so a code does not depend on its
  batch."""
  n = Q.shape[0]
  solved = jnp.zeros((n,), bool)

  def body(carry):
    x, solved, todo = carry
    rows, valid = gather_indices(todo, block)
    rows = jnp.where(valid, rows, n)
    read = jnp.minimum(rows, n - 1)
    got, ok = _conjugate_gradient(G, Q[read], support[read] & valid[:, None])
    ok = ok & valid
    x = x.at[jnp.where(ok, rows, n)].set(got, mode="drop")
    return x, solved.at[rows].set(ok, mode="drop"), todo.at[rows].set(False, mode="drop")

  x, solved, _ = lax.while_loop(lambda c: jnp.any(c[2]), body, (x, solved, todo))
  return x, solved


UNROLLED_BLOCK = 2048
OVERFLOW_BLOCK = 64


def solve_on_support(G: jax.Array, Q: jax.Array, support: jax.Array,
                     ridge: jax.Array | None = None, rows: jax.Array | None = None,
                     out: jax.Array | None = None, one_size: bool = False) -> jax.Array:
  """x (n, d) with G_SS x_S = q_S on each row's support S and x = 0 off it.

  The rows are sorted into the buckets of ``plan(d)`` by the size of their support and
  compacted into blocks of each bucket, so the work is that of the rows asked for, each at
  the size of its own support. ``one_size=True`` solves every row at size d by the looped
  Cholesky instead: slower, but a program a fraction of the size, for rarely taken paths
  (the active set's float64 refinement).

  Args:
    G: (d, d) symmetric positive semi-definite matrix.
    Q: (n, d) right-hand sides.
    support: (n, d) bool.
    ridge: pivots at or below it are replaced by it; None is ``default_ridge(G)``.
    rows: optional (n,) bool, the rows to solve (all by default); the others are ``out``.
    out: (n, d) values of the rows not solved (zeros by default).
    one_size: one bucket, at size d (see above).
  """
  n, d = Q.shape
  ridge = default_ridge(G) if ridge is None else ridge
  x = jnp.zeros_like(Q) if out is None else out
  if n == 0:
    return x
  count = jnp.sum(support, axis=-1)
  todo = jnp.ones((n,), bool) if rows is None else rows
  if not one_size and d > CG_ABOVE:
    x, solved = _cg_bucket(G, Q, support, x, todo & (count > CG_ABOVE), CG_BLOCK)
    todo = todo & ~solved
  lower = -1
  # No lax.cond around the buckets (a loop over no rows runs zero times): under vmap,
  # XLA:CPU deadlocked on a cond holding such loops and LAPACK calls (jax 0.10.2).
  for P, looped, block in ((d, True, OVERFLOW_BLOCK),) if one_size else plan(d):
    x = _solve_bucket(G, Q, support, ridge, x, todo & (count > lower) & (count <= P), P,
                      looped, block)
    lower = P
  return x
