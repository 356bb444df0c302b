"""Errors of the models package, in one module that imports nothing else of the package
(so that cards, bundles, loaders and the trust store can all raise them without import
cycles).  All are :class:`~imaging_assist.errors.UserError`: the CLI prints one line."""

from __future__ import annotations

from ..errors import UserError

__all__ = ["ModelCardError", "ArchitectureError", "ModelLoadError", "WeightsMismatchError",
           "ModelTrustError"]


class ModelCardError(UserError):
    """A model card (or a MONAI bundle's metadata) that is missing, unreadable, does not
    follow the schema or asks for more than the size limits allow."""


class ArchitectureError(ModelCardError):
    """The card names an architecture that cannot be built (or is too large)."""


class ModelLoadError(UserError):
    """Weights or a bundle that cannot be loaded."""


class WeightsMismatchError(ModelLoadError):
    """A weights file whose hash differs from the model card (corrupt or replaced)."""


class ModelTrustError(ModelLoadError):
    """A MONAI bundle with code (Python expressions, arbitrary ``_target_`` callables...)
    that the user has not trusted; nothing of it was run."""
