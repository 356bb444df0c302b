"""Folders of the models package: the user configuration folder (model folder list, trust
store, user models) and the project's ``weights/``.  No other imports of the package, so
that the registry and the trust store can both use it."""

from __future__ import annotations

from pathlib import Path

from ..userdirs import APP_NAME, config_dir  # noqa: F401 - re-exported for the models package


def user_models_dir() -> Path:
    return config_dir() / "models"


def project_weights_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "weights"
