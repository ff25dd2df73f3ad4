"""The public API: explicit exports, keyword-only options (as dm_pix's api_test enforces)."""

import inspect

import conejax

# Leading arguments that may be positional: the data and the maths' own symbols.
POSITIONAL = {"nnls": 3, "nnls_gram": 3, "nmf": 2,
              "nmf_per_class": 3, "nmf_codes": 2, "nmf_objective": 5, "fit_cones": 3, "make_cones": 4,
              "codes": 2, "project": 2, "distance": 2, "log_likelihood": 3, "calibrate": 3,
              "predict_proba": 3, "predict": 2, "score": 3, "save": 2, "load": 1,
              "features": 2, "anomaly_score": 2, "compress": 3, "kcones": 3,
              "nnls_l1": 3, "reconstruct": 3, "separate": 2, "finetune": 4,
              "make_mesh": 1, "shard_samples": 2, "nmf_sharded": 2, "nmf_per_class_sharded": 3,
              "distance_sharded": 3, "predict_sharded": 3, "reconstruct_sharded": 4,
              "nmf_partial_fit": 2, "nmf_minibatch_init": 3, "nmf_minibatch": 2,
              "random_shift": 3, "extract_patches": 2, "reassemble_patches": 3,
              "fit_patch_cones": 2, "restore": 3, "refine": 4}
PUBLIC_FUNCTIONS = sorted(POSITIONAL)


def test_every_public_function_is_exported():
  for name in PUBLIC_FUNCTIONS:
    assert callable(getattr(conejax, name)), name


def test_the_list_above_covers_every_exported_function():
  exported = {name for name, value in vars(conejax).items()
              if inspect.isfunction(value) and not name.startswith("_")}
  assert exported == set(PUBLIC_FUNCTIONS)


def test_options_are_keyword_only():
  for name in PUBLIC_FUNCTIONS:
    parameters = list(inspect.signature(getattr(conejax, name)).parameters.values())
    positional = [p for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert len(positional) <= POSITIONAL[name], (name, [p.name for p in positional])


def test_nmf_needs_an_explicit_key():
  for name in ["nmf", "nmf_per_class", "fit_cones", "kcones", "nmf_sharded",
               "nmf_per_class_sharded", "finetune", "nmf_minibatch"]:
    key = inspect.signature(getattr(conejax, name)).parameters["key"]
    assert key.kind is key.KEYWORD_ONLY and key.default is key.empty


def test_every_public_function_has_a_docstring_with_shapes():
  for name in PUBLIC_FUNCTIONS:
    doc = getattr(conejax, name).__doc__
    assert doc and "(" in doc, name
