"""Explanations with Captum (Grad-CAM, Integrated Gradients, Saliency, Occlusion), the
weight-randomisation sanity check and the deletion-AUC faithfulness score.

The names below are loaded on first use, so importing a submodule without torch
(:mod:`.names`, :mod:`.flags`) does not import torch (1.5 s).
"""

from importlib import import_module

_WHERE = {"deletion_auc": "faithfulness", "METHODS": "names", "ExplainConfig": "methods",
          "ExplainError": "names", "canonical_method": "names", "SanityReport": "sanity",
          "cascading_randomization": "sanity"}

__all__ = list(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
