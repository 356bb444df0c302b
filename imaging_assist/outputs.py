"""Output folders of the commands and the demo (engine level: the demo cannot import the CLI)."""

from __future__ import annotations

import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


def out_folder(path, sources=()) -> Path:
    """The output folder, created if needed; a one-line UserError when it cannot be one, or
    when it is one of the input folders ``sources`` or inside one (checked before anything is
    created): sources are read-only, and outputs written among them overwrite files of the same
    name and are read back as inputs by the next run over that folder."""
    if not str(path).strip():
        raise UserError("--out is empty: name an output folder")
    refuse_inside(path, sources)
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


def refuse_inside(path, sources) -> None:
    """A one-line UserError when the output folder ``path`` is one of the input folders
    ``sources`` or inside one (through symlinks; nothing is created)."""
    where = Path(path).expanduser().resolve()
    for src in sources:
        sp = Path(src).expanduser()
        if sp.is_dir():
            sp = sp.resolve()
            if where == sp or sp in where.parents:
                raise UserError(f"--out {path} is inside the input {src}: outputs must not be written among the "
                                "inputs (they would overwrite files there and be read as inputs by the next run); "
                                "choose an output folder outside it")


def refuse_input_target(path, sources, option: str, files=()) -> None:
    """A one-line UserError when the output file ``path`` would replace an input: one of
    ``sources`` (the file, zip or DICOMDIR being read), a file inside one that is a folder (a
    DICOMDIR: inside its folder), or one of ``files`` (the series' own files), through symlinks
    and hard links.  Nothing is created."""
    where = Path(path).expanduser()
    real = where.resolve()

    def same(p: Path) -> bool:
        try:
            return real == p.resolve() or (where.exists() and p.exists() and os.path.samefile(where, p))
        except OSError:
            return False

    for src in sources:
        sp = Path(src).expanduser()
        folder = sp.parent if sp.is_file() and sp.name.upper() == "DICOMDIR" else sp
        if folder.is_dir() and folder.resolve() in real.parents:
            raise UserError(f"{option} {path} is inside the input {src}: it would be written among the files "
                            "being read; choose a file outside it")
        if same(sp):
            raise UserError(f"{option} {path} is the input {src}: it would be replaced; choose another file")
    for f in files:
        if same(Path(f)):
            raise UserError(f"{option} {path} is {f}, one of the files being read: it would be replaced; "
                            "choose a file outside the input")


@contextmanager
def written_beside(path):
    """A temporary name in ``path``'s folder for writing the whole file: renamed over ``path``
    (os.replace) when the block ends, removed when it fails, so an existing ``path`` is never
    truncated or left half-written.  The name is made up, not created: the writer creates the
    file with the usual permissions."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass  # never created, or already gone
        raise


def _stem(s: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("._")
    return s[:80] or "item"


def unique_stem(name: str, used: set) -> str:
    """The file-name stem of an item (what :func:`write_item_files` writes under), unique among
    ``used`` (added to it): compared as written, ignoring case (a case-insensitive disk), so
    "film 1.png" and "film_1.png", or two names that share their first 80 characters, never
    write into each other's files."""
    base = _stem(name)
    stem, k = base, 1
    while stem.lower() in used:
        k += 1
        suffix = f"_{k}"
        stem = base[:80 - len(suffix)] + suffix
    used.add(stem.lower())
    return stem
