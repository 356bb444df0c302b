"""Which MONAI bundles (and TorchScript models: a program) the user trusts to run their code, by hash.

A bundle's code (see :mod:`.bundle_code`) runs only when the user marked *that exact
bundle* as trusted (``imaging-assist models trust ID``).  What is hashed:

* ``config_hash``: every file under ``configs/`` and ``scripts/`` (recursively: configs,
  metadata, logging.conf, Python modules the configs may import) and the top-level
  ``model.json`` / ``large_files.*`` -- as (relative path, sha256) pairs;
* the sha256 of every weights file of the bundle's card (the bundle's own
  ``large_files.yml`` hash is not enough: whoever changes the bundle can change it too).

The bundle hash combines both; the trust store is ``<config folder>/trusted_bundles.json``
(``registry.config_dir()``), written atomically with mode 0600, each read-modify-write under
its lock (``trusted_bundles.json.lock``: two windows, or the GUI and the CLI, lose no trust and
bring back no withdrawn one).  Any change after trust
(a config, a script, the weights) gives another hash: not trusted any more.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import stat
from pathlib import Path

from ..errors import UserError
from ..userdirs import locked
from .errors import ModelLoadError, ModelTrustError
from .paths import config_dir

__all__ = ["TRUST_FILE", "trust_file", "config_hash", "weights_hashes", "bundle_hash",
           "is_trusted", "trust", "untrust", "trusted_bundles"]

TRUST_FILE = "trusted_bundles.json"
_HASHED_DIRS = ("configs", "scripts")
_HASHED_TOP = ("model.json", "large_files.yml", "large_files.yaml", "large_files.json")
MAX_HASHED_FILES = 5000
MAX_HASHED_BYTES = 256 << 20  # per file under configs/ and scripts/
_CHUNK = 1 << 20


def trust_file() -> Path:
    return config_dir() / TRUST_FILE


def _sha256(p: Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    n = 0
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
            n += len(chunk)
            if limit is not None and n > limit:
                raise ModelLoadError(f"bundle file {p} is too big to be a config "
                                     f"(more than {limit >> 20} MiB)")
    return h.hexdigest()


def _hashed_files(folder: Path) -> list[Path]:
    out = [folder / n for n in _HASHED_TOP if (folder / n).exists() or (folder / n).is_symlink()]
    for d in _HASHED_DIRS:
        root = folder / d
        if root.is_symlink():
            out.append(root)  # refused below: a linked folder's files are not the bundle's
        elif root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                out.extend(Path(dirpath) / n for n in filenames)
                # a link to a folder is listed (and refused) instead of walked
                out.extend(Path(dirpath) / n for n in dirnames if (Path(dirpath) / n).is_symlink())
                if len(out) > MAX_HASHED_FILES:
                    break
            if len(out) > MAX_HASHED_FILES:
                raise ModelLoadError(f"bundle {folder}: more than {MAX_HASHED_FILES} files "
                                     f"under {', '.join(_HASHED_DIRS)}")
    return sorted(out)


def config_hash(folder: str | Path, overrides: dict[str, bytes] | None = None) -> str:
    """sha256 over (path, sha256) of the bundle's configs, metadata, scripts, card and
    large_files.  ``overrides``: {relative path: bytes already read} (hashed instead of the
    file, so that what is checked is exactly what is parsed)."""
    folder = Path(folder)
    overrides = overrides or {}
    h = hashlib.sha256(b"imaging-assist bundle configs v1\n")
    for p in _hashed_files(folder):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            raise ModelLoadError(f"bundle {folder}: {rel} is a symbolic link; a bundle's configs "
                                 f"and scripts must be its own files to be verified")
        try:
            st = p.stat()
        except OSError as e:
            raise ModelLoadError(f"cannot read bundle file {p}: {e.strerror or e}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ModelLoadError(f"bundle file {p} is not a regular file")
        digest = (hashlib.sha256(overrides[rel]).hexdigest() if rel in overrides
                  else _sha256(p, MAX_HASHED_BYTES))
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest()


def weights_hashes(folder: str | Path) -> dict[str, str]:
    """{file: sha256} of the weights files of the folder's card (a bundle's, or a TorchScript
    model's ``model.json``)."""
    folder = Path(folder)
    out = {}
    for wf in _card(folder).weights:
        p = folder / wf.file
        try:
            out[wf.file] = _sha256(p)
        except FileNotFoundError:
            out[wf.file] = "missing"
        except OSError as e:
            raise ModelLoadError(f"cannot read weights {p}: {e.strerror or e}") from None
    return out


def bundle_hash(folder: str | Path, weights: dict[str, str] | None = None,
                configs: str | None = None) -> str:
    """The hash that trust is recorded for: configs + weights (computed when not given)."""
    folder = Path(folder)
    configs = configs or config_hash(folder)
    weights = weights if weights is not None else weights_hashes(folder)
    h = hashlib.sha256(b"imaging-assist bundle v1\n")
    h.update(configs.encode() + b"\n")
    for f in sorted(weights):
        h.update(f"{f}\0{weights[f]}\n".encode())
    return h.hexdigest()


def _card(folder: Path):
    """The folder's card, as the registry reads it (``registry.read_card``; not imported, the
    registry imports this module)."""
    from .bundle import derive_card, is_bundle
    from .card import load_card

    return derive_card(folder) if is_bundle(folder) else load_card(folder)


# --------------------------------------------------------------------------- the store
def _read_store(strict: bool) -> dict:
    p = trust_file()
    if not p.is_file():
        return {"version": 1, "bundles": []}
    st = p.stat()
    foreign = hasattr(os, "getuid") and st.st_uid != os.getuid()
    if st.st_mode & 0o022 or foreign:  # someone else could have added hashes
        if strict:
            raise ModelTrustError(f"the trust store {p} is writable by other users (mode "
                                  f"{stat.S_IMODE(st.st_mode):o}{', another owner' if foreign else ''}): "
                                  "it is not believed; check it, then `chmod 600` it")
        return {"version": 1, "bundles": []}
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(d, dict) or not isinstance(d.get("bundles"), list):
            raise ValueError("not a trust store")
        return d
    except (OSError, ValueError, RecursionError) as e:
        if strict:
            raise ModelTrustError(f"cannot read the trust store {p}: {e} (fix or delete the "
                                  "file; bundles are then untrusted)") from None
        return {"version": 1, "bundles": []}


def _write_store(d: dict) -> None:
    p = trust_file()
    tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
    try:  # a config folder that cannot be written (read-only home, a file in the way): one line
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as e:
        raise UserError(f"cannot write {p}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(d, f, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _store_locked():
    """Hold the trust store's lock for a read-modify-write: another process's trust or untrust
    (a second window, the CLI) between the read and the write would otherwise be lost, or a
    withdrawn trust written back.  Hash the bundle before taking it (that takes seconds).
    Held for 10 s, or a folder that cannot be written: one UserError line."""
    return locked(trust_file(), error=UserError)


def trusted_bundles() -> list[dict]:
    """The records of the trust store (hash, folder, id, when)."""
    return [b for b in _read_store(False)["bundles"] if isinstance(b, dict)]


def is_trusted(folder: str | Path, weights: dict[str, str] | None = None,
               configs: str | None = None) -> bool:
    """True when the bundle, exactly as it is now, was marked trusted.  ``weights`` /
    ``configs``: hashes already computed by the caller (from the bytes it will use)."""
    recs = trusted_bundles()
    if not recs:
        return False
    try:
        h = bundle_hash(folder, weights, configs)
    except Exception:  # noqa: BLE001 - a bundle that cannot be hashed is not trusted
        return False
    return any(r.get("hash") == h for r in recs)


def trust(folder: str | Path, expect: str | None = None) -> str:
    """Mark the bundle, as it is now (configs + weights), as trusted; returns its hash.

    ``expect``: the hash of what the user was shown (:func:`bundle_hash` before asking); when
    the folder changed since, nothing is trusted (a config swapped while the prompt waited would
    otherwise be trusted unseen)."""
    folder = Path(folder).resolve()
    card = _card(folder)
    w = weights_hashes(folder)
    missing = [f for f, v in w.items() if v == "missing"]
    if missing:
        raise ModelTrustError(f"bundle {card.id}: weights {missing[0]} missing; only a complete "
                              "bundle can be trusted")
    ch = config_hash(folder)
    h = bundle_hash(folder, w, ch)
    if expect is not None and h != expect:
        raise ModelTrustError(f"{card.id}: the model folder {folder} changed while you were deciding; "
                              "nothing was trusted: look at it again")
    with _store_locked():
        d = _read_store(True)
        d["bundles"] = [b for b in d["bundles"] if isinstance(b, dict)
                        and b.get("hash") != h and b.get("folder") != str(folder)]
        d["bundles"].append({"hash": h, "id": card.id, "folder": str(folder), "config_hash": ch,
                             "weights": w,
                             "trusted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
        d["version"] = 1
        _write_store(d)
    return h


def untrust(folder: str | Path) -> bool:
    """Forget trust in the bundle (its current hash and any record for its folder)."""
    folder = Path(folder).resolve()
    try:  # hashed before the store is read: a trust recorded meanwhile is not written back
        h = bundle_hash(folder)
    except Exception:  # noqa: BLE001 - a broken bundle can still be untrusted by folder
        h = None
    with _store_locked():
        d = _read_store(True)
        keep = [b for b in d["bundles"] if isinstance(b, dict)
                and b.get("hash") != h and b.get("folder") != str(folder)]
        changed = len(keep) != len(d["bundles"])
        if changed:
            d["bundles"] = keep
            _write_store(d)
    return changed
