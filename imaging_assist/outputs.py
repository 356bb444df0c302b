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
    refuse_inside(path, sources, file_folders=False)  # as before for evaluate, batch, demo (analyze calls it itself)
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


def refuse_inside(path, sources, file_folders: bool = True) -> None:
    """A one-line UserError when the output folder ``path`` is one of the input folders
    ``sources`` or inside one (through symlinks; nothing is created).  With ``file_folders``
    (analyze), an input that is a file counts too: ``--out`` must not be the folder it lies in
    (its own earlier key images and report.pdf there would be replaced; a sub-folder is fine),
    and a DICOMDIR's folder is an input folder like any other."""
    where = Path(path).expanduser().resolve()
    for src in sources:
        sp = Path(src).expanduser()
        if file_folders and sp.is_file():
            if sp.name.upper() == "DICOMDIR":
                sp = sp.parent
            elif where in (sp.parent.resolve(), sp.resolve().parent):  # the folder named, and the link's target's
                raise UserError(f"--out {path} is the folder of the input {src}: outputs must not be written "
                                "beside the inputs (they would overwrite files there of the same names); "
                                "choose another folder (a new sub-folder is fine)")
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
            what = "" if str(f) == str(path) else f"{f}, "  # "the file X is X" says nothing twice
            raise UserError(f"{option} {path} is {what}one of the files being read: it would be replaced; "
                            "choose a file outside the input")


def _partial_name(path: Path) -> Path:
    """A hidden, random name beside ``path`` that ends with ``path``'s own extension: PIL,
    nibabel and fpdf choose the format by it, and ``np.save`` adds ".npy" to a name without it."""
    name = path.name
    low = name.lower()
    ext = ".nii.gz" if low.endswith(".nii.gz") else os.path.splitext(name)[1]
    return path.with_name(f".{name}.{secrets.token_hex(4)}.partial{ext}")


@contextmanager
def written_beside(path):
    """A new temporary file in ``path``'s folder for writing the whole file: renamed over
    ``path`` (os.replace) when the block ends, removed when it fails (an error, Ctrl-C), so an
    existing ``path`` is never truncated or left half-written.  The temporary file is created
    here, empty, with O_EXCL|O_NOFOLLOW under a random name (as pacs.transfer writes), so a link
    planted in the folder is never written through; os.replace then replaces a link named
    ``path`` itself, never the file it points to (an input, a user's file).  The writer (PIL,
    nibabel, numpy, fpdf, pydicom, Qt) opens this file and writes it whole."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for attempt in range(8):
        tmp = _partial_name(path)
        try:
            os.close(os.open(tmp, flags, 0o666))  # the usual permissions (umask)
            break
        except FileExistsError:
            if attempt == 7:
                raise
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass  # already gone
        raise


#: what ``analyze`` writes last into its folder: the index of the run and its report
RUN_INDEX = ("results.json", "report.pdf")


def replace_earlier_run(out_dir, echo=None) -> None:
    """Called before an item's files are written into ``out_dir``: when the folder holds the
    results.json (and report.pdf) of an earlier run, they are removed first, with a note
    (``echo``, default stderr).  They are written only at the end of a run, so any found now
    describe a run this one replaces; left in place, a run killed or stopped by a full disk
    would leave them beside this run's files of the same names (one patient's results.json
    beside another's label map).  report.pdf goes first: a crash between the two leaves the
    results.json, removed by the next run."""
    out_dir = Path(out_dir)
    if not os.path.lexists(out_dir / RUN_INDEX[0]):
        return
    gone = []
    for name in reversed(RUN_INDEX):
        try:
            os.unlink(out_dir / name)
            gone.append(name)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise UserError(f"cannot remove {out_dir / name} of an earlier run before replacing it: "
                            f"{e.strerror or e}") from None
    if gone:
        import sys

        from .safe_text import printable

        (echo or (lambda m: print(printable(m), file=sys.stderr)))(
            f"note: removed {' and '.join(reversed(gone))} of an earlier run in {out_dir}: this run replaces "
            "them (they would describe files it overwrites)")


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
