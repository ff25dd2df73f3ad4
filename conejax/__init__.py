"""conejax: non-negative cones as cheap, reusable generative models, in JAX.

Samples are rows: data U is (N, m), a dictionary W is (m, d) with atoms as columns, codes
H are (N, d), and U ~ H W^T.
"""

from conejax._nmf import NMFResult as NMFResult
from conejax._nmf import nmf as nmf
from conejax._nmf import nmf_per_class as nmf_per_class
from conejax._nmf_steps import objective as nmf_objective
from conejax._nnls import NNLSResult as NNLSResult
from conejax._nnls import NNLSState as NNLSState
from conejax._nnls import init as nnls_init
from conejax._nnls import nnls as nnls
from conejax._nnls import nnls_gram as nnls_gram
from conejax._nnls import step as nnls_step

__version__ = "0.1.0"
