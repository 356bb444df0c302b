"""Model registry, model cards and weight loading (no Qt here).

A model is a folder with a model card (``model.json``, schema in docs/model_card.md) and
weights, or a MONAI bundle folder. See :mod:`.registry` for where models are found and
:mod:`.loaders` for how weights are verified (sha256) and loaded.

Importing this package does not import torch (the CLI registers its subcommands from
:mod:`.cli` on every start); the loaders are imported on first use.
"""

from .card import ModelCard, ModelCardError, load_card
from .registry import ModelEntry, Registry

__all__ = ["ModelCard", "ModelCardError", "load_card", "LoadedModel", "ModelLoadError",
           "WeightsMismatchError", "load_model", "ModelEntry", "Registry"]


def __getattr__(name):
    if name in ("LoadedModel", "ModelLoadError", "WeightsMismatchError", "load_model"):
        from . import loaders

        return getattr(loaders, name)
    raise AttributeError(name)
