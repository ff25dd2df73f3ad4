"""The NNLS solvers under one protocol, and the driver that runs them.

Every solver is a frozen dataclass of settings with ``prepare`` / ``init`` / ``step`` /
``residual`` / ``solution`` (see ``_protocol``); ``solve`` runs any of them with chunking,
per-sample freezing, a ``converged`` flag and differentiation. The public functions of
conejax take ``solver=`` as one of these objects or as a name ("auto", "apg", "admm",
"active_set"; "pdhg" for the L1 fit).

Example:
  >>> import jax.numpy as jnp
  >>> from conejax import solvers
  >>> W = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  >>> problem = solvers.QuadraticProblem(W.T @ W, jnp.array([[1.0, -1.0]]), 0.0)
  >>> solvers.solve(solvers.ActiveSet(), problem).h
  Array([[0.5, 0. ]], dtype=float32)
"""

from conejax.solvers._active_set import ActiveSet as ActiveSet
from conejax.solvers._active_set import ActiveSetState as ActiveSetState
from conejax.solvers._admm import ADMM as ADMM
from conejax.solvers._admm import ADMMState as ADMMState
from conejax.solvers._apg import APG as APG
from conejax.solvers._apg import APGState as APGState
from conejax.solvers._auto import resolve as resolve
from conejax.solvers._driver import DIFFERENTIATIONS as DIFFERENTIATIONS
from conejax.solvers._driver import solve as solve
from conejax.solvers._linalg import solve_on_support as solve_on_support
from conejax.solvers._pdhg import PDHG as PDHG
from conejax.solvers._pdhg import L1State as L1State
from conejax.solvers._protocol import AbstractSolver as AbstractSolver
from conejax.solvers._protocol import ConvergenceWarning as ConvergenceWarning
from conejax.solvers._protocol import L1Problem as L1Problem
from conejax.solvers._protocol import NNLSResult as NNLSResult
from conejax.solvers._protocol import QuadraticProblem as QuadraticProblem
from conejax.solvers._protocol import kkt_residual as kkt_residual
from conejax.solvers._protocol import lipschitz_constant as lipschitz_constant
from conejax.solvers._protocol import warn_if_not_converged as warn_if_not_converged
