"""Solver names and the automatic choice.

Strings are aliases for solver objects with default settings: "apg" (``APG``), "admm"
(``ADMM``), "active_set" (``ActiveSet``), "pdhg" (``PDHG``, the L1 problem) and "auto".
"auto" picks ``ActiveSet`` for the quadratic problem with a Gram matrix of at most
ACTIVE_SET_MAX_ATOMS = 128 atoms (exact), ``ADMM`` above (on the 640-atom union of MNIST
class cones the active set's passive sets are large and it was 400x slower than ADMM in
``experiments/bench_nnls.py``), ``APG`` where the iterations must be unrolled or G is
matrix-free, and ``PDHG`` for the L1 problem. With more atoms than features
(``n_features``: G = W^T W is then singular, e.g. 64 atoms pooled to 49 pixels) it picks
``ADMM``: the active set's pivoting on such passive sets stopped short or overflowed.
"""

from __future__ import annotations

from conejax.solvers._active_set import ActiveSet
from conejax.solvers._admm import ADMM
from conejax.solvers._apg import APG
from conejax.solvers._pdhg import PDHG
from conejax.solvers._protocol import AbstractSolver

NAMES = ("auto", "apg", "admm", "active_set")
L1_NAMES = ("auto", "pdhg")
_CLASSES = {"apg": APG, "admm": ADMM, "active_set": ActiveSet, "pdhg": PDHG}


ACTIVE_SET_MAX_ATOMS = 128


def resolve(solver, *, loss: str = "l2", matrix_free: bool = False,
            differentiation: str = "implicit", max_iter=None, tol=None,
            n_atoms: int | None = None, n_features: int | None = None) -> AbstractSolver:
  """A solver object from a name or an object; ``max_iter`` / ``tol`` set a named one.

  Raises:
    ValueError: on an unknown name, a solver for the other problem, or ``max_iter`` /
      ``tol`` given beside a solver object (set them on the object instead).
  """
  if isinstance(solver, AbstractSolver):
    if max_iter is not None or tol is not None:
      raise ValueError(f"max_iter and tol are settings of the solver object; pass "
                       f"{type(solver).__name__}(max_iter=..., tol=...) instead.")
    wanted = PDHG if loss == "l1" else None
    if (loss == "l1") != isinstance(solver, PDHG):
      kind = "the l1 loss needs PDHG" if wanted else "PDHG solves only the l1 loss"
      raise ValueError(f"{type(solver).__name__} cannot solve this problem: {kind}.")
    return solver
  names = L1_NAMES if loss == "l1" else NAMES
  if not isinstance(solver, str) or solver not in names:
    raise ValueError(f"solver must be one of {names} or a conejax.solvers object; got "
                     f"{solver!r}.")
  if solver == "auto":
    if loss == "l1":
      solver = "pdhg"
    elif matrix_free or differentiation == "unroll":
      solver = "apg"
    elif n_atoms is not None and (n_atoms > ACTIVE_SET_MAX_ATOMS or (
        n_features is not None and n_atoms > n_features)):
      solver = "admm"
    else:
      solver = "active_set"
  settings = {}
  if max_iter is not None:
    settings["max_iter"] = max_iter
  if tol is not None and solver != "active_set":
    settings["tol"] = tol
  return _CLASSES[solver](**settings)
