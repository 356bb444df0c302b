"""Output folders of the commands and the demo (engine level: the demo cannot import the CLI)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError


def out_folder(path) -> Path:
    """The output folder, created if needed; a one-line UserError when it cannot be one."""
    if not str(path).strip():
        raise UserError("--out is empty: name an output folder")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{path} exists and is not a folder: choose another --out")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output folder {path}: {e.strerror or e}") from None
    if not os.access(p, os.W_OK):
        raise UserError(f"cannot write to the output folder {path}")
    return p
