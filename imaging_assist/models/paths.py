"""Folders of the models package: the user configuration folder (model folder list, trust
store, user models) and the project's ``weights/``.  No other imports of the package, so
that the registry and the trust store can both use it."""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "imaging-assist"


def config_dir() -> Path:
    """``IMAGING_ASSIST_CONFIG_DIR`` (tests use it) or the platformdirs user config folder."""
    env = os.environ.get("IMAGING_ASSIST_CONFIG_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def user_models_dir() -> Path:
    return config_dir() / "models"


def project_weights_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "weights"
