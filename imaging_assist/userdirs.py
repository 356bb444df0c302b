"""The user's own folders, in one place for every room of the engine.

- ``config_dir()``: settings, PACS nodes, the site key, site operating points, user models.
- ``data_dir()``: what the program records (audit trail, prediction log, saved annotations).

platformdirs gives the platform's folders and honours ``XDG_CONFIG_HOME`` / ``XDG_DATA_HOME``
on Linux, so tests and sites can relocate both; ``IMAGING_ASSIST_CONFIG_DIR`` and
``IMAGING_ASSIST_DATA_DIR`` override them outright.  Nothing else imports platformdirs.
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "imaging-assist"


def config_dir() -> Path:
    """``IMAGING_ASSIST_CONFIG_DIR`` or the platformdirs user config folder (not created here)."""
    env = os.environ.get("IMAGING_ASSIST_CONFIG_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def data_dir() -> Path:
    """``IMAGING_ASSIST_DATA_DIR`` or the platformdirs user data folder (not created here)."""
    env = os.environ.get("IMAGING_ASSIST_DATA_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def write_json_atomic(path, data, *, fsync: bool = False, **dump_kwargs) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file in the same folder and
    ``os.replace``: a reader (or a crash) sees the old file or the new one, never half of one.
    The folder is created.  ``fsync`` flushes the bytes to disk before the rename."""
    import json
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, **dump_kwargs)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
