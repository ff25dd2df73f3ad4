"""The public API: explicit exports, keyword-only options (as dm_pix's api_test enforces)."""

import inspect

import conejax

PUBLIC_FUNCTIONS = ["nnls", "nnls_gram", "nnls_init", "nnls_step", "nmf", "nmf_per_class",
                    "nmf_objective"]
# Leading arguments that may be positional: the data and the maths' own symbols.
POSITIONAL = {"nnls": 3, "nnls_gram": 3, "nnls_init": 5, "nnls_step": 5, "nmf": 2,
              "nmf_per_class": 3, "nmf_objective": 5}


def test_every_public_function_is_exported():
  for name in PUBLIC_FUNCTIONS:
    assert callable(getattr(conejax, name)), name


def test_options_are_keyword_only():
  for name in PUBLIC_FUNCTIONS:
    parameters = list(inspect.signature(getattr(conejax, name)).parameters.values())
    positional = [p for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert len(positional) <= POSITIONAL[name], (name, [p.name for p in positional])


def test_nmf_needs_an_explicit_key():
  for name in ["nmf", "nmf_per_class"]:
    key = inspect.signature(getattr(conejax, name)).parameters["key"]
    assert key.kind is key.KEYWORD_ONLY and key.default is key.empty


def test_every_public_function_has_a_docstring_with_shapes():
  for name in PUBLIC_FUNCTIONS:
    doc = getattr(conejax, name).__doc__
    assert doc and "(" in doc, name
