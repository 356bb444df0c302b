"""Model registry, model cards and weight loading (no Qt here).

A model is a folder with a model card (``model.json``, schema in docs/model_card.md) and
weights, or a MONAI bundle folder. See :mod:`.registry` for where models are found,
:mod:`.loaders` for how weights are verified (sha256) and loaded, :mod:`.bundle_code` and
:mod:`.trust` for the code in MONAI bundles and the user's trust in them, :mod:`.errors`
for the exceptions (all one-line ``UserError`` subclasses).

Importing this package does not import torch (the CLI registers its subcommands from
:mod:`.cli` on every start); the loaders are imported on first use.
"""

from .card import ModelCard, load_card
from .errors import (ArchitectureError, ModelCardError, ModelLoadError, ModelTrustError,
                     WeightsMismatchError)
from .registry import ModelEntry, Registry

__all__ = ["ModelCard", "ModelCardError", "load_card", "LoadedModel", "ModelLoadError",
           "WeightsMismatchError", "ModelTrustError", "ArchitectureError", "load_model",
           "ModelEntry", "Registry"]


def __getattr__(name):
    if name in ("LoadedModel", "load_model"):
        from . import loaders

        return getattr(loaders, name)
    raise AttributeError(name)
