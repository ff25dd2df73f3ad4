"""conejax: non-negative cones as cheap, reusable generative models, in JAX.

Samples are rows: data U is (N, m), a dictionary W is (m, d) with atoms as columns, codes
H are (N, d), and U ~ H W^T. A ``Cones`` stacks K dictionaries as W of shape (K, m, d).
"""

from conejax import data as data
from conejax import operators as operators
from conejax import audio as audio
from conejax import solvers as solvers
from conejax._calibrate import calibrate as calibrate
from conejax._cone import Cones as Cones
from conejax._cone import codes as codes
from conejax._cone import distance as distance
from conejax._cone import fit_cones as fit_cones
from conejax._cone import log_likelihood as log_likelihood
from conejax._cone import make_cones as make_cones
from conejax._cone import predict as predict
from conejax._cone import predict_proba as predict_proba
from conejax._cone import project as project
from conejax._cone import score as score
from conejax._finetune import FinetuneHistory as FinetuneHistory
from conejax._finetune import FinetuneResult as FinetuneResult
from conejax._finetune import finetune as finetune
from conejax._finetune import random_shift as random_shift
from conejax._inverse import Reconstruction as Reconstruction
from conejax._inverse import reconstruct as reconstruct
from conejax._inverse import separate as separate
from conejax._io import load as load
from conejax._io import save as save
from conejax._nmf import NMFResult as NMFResult
from conejax._nmf import nmf as nmf
from conejax._nmf import nmf_codes as nmf_codes
from conejax._nmf import nmf_per_class as nmf_per_class
from conejax._nmf_steps import objective as nmf_objective
from conejax._nnls import nnls as nnls
from conejax._nnls import nnls_gram as nnls_gram
from conejax._nnls_l1 import nnls_l1 as nnls_l1
from conejax._patch_cones import PatchCones as PatchCones
from conejax._patch_cones import fit_patch_cones as fit_patch_cones
from conejax._refine import Blend as Blend
from conejax._refine import Fill as Fill
from conejax._refine import Keep as Keep
from conejax._refine import refine as refine
from conejax._restore import Restoration as Restoration
from conejax._restore import restore as restore
from conejax._sharding import distance_sharded as distance_sharded
from conejax._sharding import make_mesh as make_mesh
from conejax._sharding import nmf_per_class_sharded as nmf_per_class_sharded
from conejax._sharding import nmf_sharded as nmf_sharded
from conejax._sharding import predict_sharded as predict_sharded
from conejax._sharding import reconstruct_sharded as reconstruct_sharded
from conejax._sharding import shard_samples as shard_samples
from conejax._streaming import StreamingNMFResult as StreamingNMFResult
from conejax._streaming import StreamingNMFState as StreamingNMFState
from conejax._streaming import nmf_minibatch as nmf_minibatch
from conejax._streaming import nmf_minibatch_init as nmf_minibatch_init
from conejax._streaming import nmf_partial_fit as nmf_partial_fit
from conejax._uses import anomaly_score as anomaly_score
from conejax._uses import compress as compress
from conejax._uses import features as features
from conejax._uses import kcones as kcones
from conejax.patches import extract_patches as extract_patches
from conejax.patches import reassemble_patches as reassemble_patches
from conejax.solvers import ConvergenceWarning as ConvergenceWarning
from conejax.solvers import NNLSResult as NNLSResult

__version__ = "0.1.0"

_SKLEARN = ("ConeClassifier", "ConeNMF")  # conejax.sklearn, imported on first use


def __getattr__(name):
  """``conejax.ConeClassifier`` and ``conejax.ConeNMF`` without importing scikit-learn
  (an optional dependency: ``pip install conejax[sklearn]``) until they are used."""
  if name in _SKLEARN:
    from conejax import sklearn
    return getattr(sklearn, name)
  raise AttributeError(f"module 'conejax' has no attribute {name!r}")
