"""Where models are found: folders with a model card or MONAI bundles.

Sources, looked up in this order (the first model with an id wins, later ones are listed
as shadowed):

1. folders the user added (``imaging-assist models add PATH``), newest first (a damaged list of
   them is one warning: the other sources still count);
2. the user models folder ``<platformdirs user_config_dir>/models``;
3. ``weights/`` of the project checkout.

The configuration folder can be moved with ``IMAGING_ASSIST_CONFIG_DIR`` (tests use it).
A source folder may itself be a model folder or hold model folders one level down.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .card import CARD_FILE, ModelCard, load_card
from .errors import ModelCardError
from .paths import APP_NAME, config_dir, project_weights_dir, user_models_dir

__all__ = ["APP_NAME", "FOLDERS_FILE", "ModelEntry", "Registry", "config_dir", "user_models_dir",
           "project_weights_dir", "is_model_folder", "read_card", "bundle_contains_code"]

FOLDERS_FILE = "model_folders.json"
_log = logging.getLogger(__name__)
_warned: set[str] = set()  # model folder lists already warned about (once per process)


def is_model_folder(p: Path) -> bool:
    from .bundle import is_bundle

    return (p / CARD_FILE).is_file() or is_bundle(p)


def read_card(folder: Path) -> ModelCard:
    from .bundle import derive_card, is_bundle

    if is_bundle(folder):
        return derive_card(folder)
    return load_card(folder)


def bundle_contains_code(folder: Path) -> bool:
    """True when loading the bundle would run code (see :mod:`.bundle_code`); a bundle
    whose config cannot be read counts as containing code (it cannot be checked)."""
    from .bundle_code import run_plan
    from .card import read_json_limited

    try:
        meta = read_json_limited(Path(folder) / "configs" / "metadata.json", "bundle metadata")
        return bool(run_plan(folder, meta=meta if isinstance(meta, dict) else None).code)
    except UserError:
        return True


@dataclass
class ModelEntry:
    """A model found by the registry.

    ``contains_code``: a MONAI bundle whose evaluated parts contain code (expressions,
    callables that are not plain MONAI/torch building blocks...); ``trusted``: the user
    trusted this exact bundle (configs + weights, by hash; computed on first use);
    :attr:`runnable_without_prompt`: verified and (no code or trusted) -- what the demo and
    the viewer's auto-run check before running a model."""

    folder: Path
    source: str  # "added", "user", "project" or "path"
    card: ModelCard | None = None
    error: str | None = None  # the card could not be read or validated
    shadowed_by: str | None = None  # folder of the model with the same id that wins
    verify: list = field(default_factory=list)  # loaders.VerifyResult, after verify()
    contains_code: bool = False
    _trusted: bool | None = field(default=None, repr=False)

    @property
    def trusted(self) -> bool:
        if self._trusted is None:
            from .trust import is_trusted

            self._trusted = bool(self.card is not None and (self.card.is_bundle or is_program(self.card))
                                 and is_trusted(self.folder))
        return self._trusted

    @trusted.setter
    def trusted(self, v: bool) -> None:
        self._trusted = bool(v)

    @property
    def runnable_without_prompt(self) -> bool:
        """Verified weights and no code to run, or code the user trusted."""
        return (self.card is not None and self.verified is True and not self.error
                and (not self.contains_code or self.trusted))

    @property
    def id(self) -> str:
        return self.card.id if self.card else self.folder.name

    @property
    def verified(self) -> bool | None:
        if not self.verify:
            return None
        return all(v.ok for v in self.verify)

    def to_dict(self) -> dict:
        c = self.card
        d = {"id": self.id, "folder": str(self.folder), "source": self.source,
             "task": c.task if c else None, "modality": c.modality if c else None,
             "body_part": c.body_part if c else None, "version": c.version if c else None,
             "format": c.format if c else None, "spatial_dims": c.spatial_dims if c else None,
             "verified": self.verified, "error": self.error, "shadowed_by": self.shadowed_by,
             "contains_code": self.contains_code, "trusted": self.trusted,
             "runnable_without_prompt": self.runnable_without_prompt}
        if self.verify:
            d["verify"] = [v.to_dict() for v in self.verify]
        return d


class Registry:
    def __init__(self, sources: list[tuple[Path, str]] | None = None):
        self._explicit = sources
        self._blocked: dict[str, str] = {}  # model id -> why its promoted version is refused
        self.warning = ""  # one line when the model folder list could not be read (said once)

    # ------------------------------------------------------------------ sources
    def added_folders(self, strict: bool = True) -> list[Path]:
        """The folders of ``models add``.  A file that cannot be read is a UserError, or with
        ``strict=False`` (looking models up) one warning per process and no added folders: the
        other sources (the shipped weights/ among them) do not depend on it."""
        p = config_dir() / FOLDERS_FILE
        if not p.is_file():
            return []
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            folders = d.get("folders", []) if isinstance(d, dict) else None
            if not isinstance(folders, list):
                raise ValueError("not a list of folders")
            # not "" (the folder the program runs in) nor a name no folder can have
            return [Path(x) for x in folders if isinstance(x, str) and x.strip() and "\0" not in x]
        except (OSError, ValueError, RecursionError) as e:
            msg = f"cannot read the model folder list {p}: {' '.join(str(e).split())[:200]}"
            if strict:
                raise UserError(msg) from None
            self.warning = msg
            if str(p) not in _warned:
                _warned.add(str(p))
                _log.warning("warning: %s; the folders added with `models add` are left out until it is "
                             "fixed or deleted", msg)
            return []

    def sources(self) -> list[tuple[Path, str]]:
        if self._explicit is not None:
            return list(self._explicit)
        from ..monitoring.versions import promoted_sources  # issue 18: a promoted site version first

        good, self._blocked = promoted_sources()
        out = [(f, "promoted") for f in good]
        out += [(f, "added") for f in reversed(self.added_folders(strict=False))]
        out.append((user_models_dir(), "user"))
        out.append((project_weights_dir(), "project"))
        return out

    def add_folder(self, path: str | Path) -> list[ModelEntry]:
        p = Path(path).expanduser().resolve()
        if not p.is_dir():
            raise UserError(f"{path} is not a folder")
        entries = self._scan_source(p, "added")
        if not entries:
            raise UserError(f"no model found in {p}: a model folder holds {CARD_FILE} (or is a MONAI "
                            "bundle with configs/metadata.json), directly or one level down")
        for e in entries:
            if e.card is not None and e.card.is_bundle and not e.error:
                # `models add` lists a bundle's code: a config that cannot be read is this
                # folder's error before anything is recorded (not after "added")
                from .bundle_code import bundle_code

                try:
                    bundle_code(e.folder)
                except UserError as err:
                    e.card, e.error = None, str(err)
        bad = [e for e in entries if e.error]
        if is_model_folder(p) and bad:
            raise ModelCardError(bad[0].error)
        # what was added, by hash: `models verify` (and a load) tell when the folder changes later;
        # hashed before the lock is taken (seconds for big weights)
        new_hashes: dict[str, dict | None] = {}
        for e in entries:
            if e.card is not None and not e.error:
                try:
                    new_hashes[str(e.folder)] = _folder_hashes(e.folder)
                except UserError:  # a linked config...: nothing recorded, loading refuses it anyway
                    new_hashes[str(e.folder)] = None
        from ..userdirs import locked, write_json_atomic

        path = config_dir() / FOLDERS_FILE
        try:
            # under the list's lock, read again: another process's `models add` in between is kept
            # (and the list is written through a temporary file of its own, not a shared name)
            with locked(path):
                folders = [f for f in self.added_folders() if f != p] + [p]
                hashes = added_hashes()
                for k, v in new_hashes.items():
                    if v is None:
                        hashes.pop(k, None)
                    else:
                        hashes[k] = v
                write_json_atomic(path, {"folders": [str(f) for f in folders], "hashes": hashes}, indent=2)
        except OSError as e:  # a config folder that cannot be written (read-only home, a file in the way)
            raise UserError(f"cannot write {path}: {e.strerror or e}") from None
        return entries

    # ------------------------------------------------------------------ scanning
    def _scan_source(self, root: Path, source: str) -> list[ModelEntry]:
        if not root.is_dir():
            return []
        if is_model_folder(root):
            folders = [root]
        else:
            try:
                folders = sorted(d for d in root.iterdir() if d.is_dir() and is_model_folder(d))
            except OSError:
                folders = []
        return [_entry(f, source) for f in folders]

    def entries(self) -> list[ModelEntry]:
        seen: dict[str, ModelEntry] = {}
        from ..monitoring.versions import EVERY_MODEL

        out = []
        for root, source in self.sources():
            for e in self._scan_source(root, source):
                if e.card is not None:
                    if e.card.id in seen:
                        e.shadowed_by = str(seen[e.card.id].folder)
                    else:
                        seen[e.card.id] = e
                    # a promoted version that changed or vanished: its id is refused (not run
                    # from the shipped folder in its place), the other models run
                    why = self._blocked.get(e.card.id) or self._blocked.get(EVERY_MODEL)
                    if why:
                        e.error = why
                out.append(e)
        return out

    def get(self, id_or_path: str) -> ModelEntry:
        p = Path(id_or_path).expanduser()
        # a path when it looks like one, or names a model folder here; a data folder in the
        # current folder that happens to share a model's id is not taken for the model
        if os.sep in id_or_path or (p.is_dir() and is_model_folder(p)):
            if not p.is_dir() or not is_model_folder(p):
                raise UserError(f"{id_or_path} is not a model folder (no {CARD_FILE} or MONAI bundle)")
            e = _entry(p.resolve(), "path")
            if e.card is None:
                raise UserError(e.error)
            return e
        all_e = self.entries()
        for e in all_e:
            if e.card is not None and e.card.id == id_or_path and e.shadowed_by is None:
                if e.error:
                    raise UserError(e.error)
                return e
        broken = [e for e in all_e if e.card is None and e.folder.name == id_or_path]
        if broken:
            raise UserError(broken[0].error)
        ids = sorted({e.card.id for e in all_e if e.card is not None})
        raise UserError(f"unknown model {id_or_path!r}; available: {', '.join(ids) or 'none'} "
                        "(see `imaging-assist models list`)")

    def verify_entry(self, e: ModelEntry) -> ModelEntry:
        """Hash the weights (``e.verify``) and recheck trust (a bundle may have changed)."""
        from .loaders import verify

        if e.card is not None:
            e.verify = verify(e.card)
            e._trusted = None
            changed = changed_since_add(e.folder)
            if changed:
                from .loaders import VerifyResult

                e.verify.append(VerifyResult("model folder", False, "sha256", None, None,
                                             changed_message(e.id, e.folder, changed)))
        return e

    def load(self, id_or_path: str, device="cpu"):
        from .loaders import load_model

        return load_model(self.get(id_or_path).card, device)


def _entry(folder: Path, source: str) -> ModelEntry:
    try:
        card = read_card(folder)
        code = (bundle_contains_code(folder) if card.is_bundle else False) or is_program(card)
    except UserError as e:
        return ModelEntry(folder, source, error=str(e))
    except Exception as e:  # noqa: BLE001 - one broken folder is its own problem, not the registry's
        _log.debug("model folder %s could not be read", folder, exc_info=True)
        first = (str(e).strip().splitlines() or [""])[0][:200]
        return ModelEntry(folder, source, error=f"cannot read model folder {folder}: "
                                                f"{type(e).__name__}: {first}")
    return ModelEntry(folder, source, card=card, contains_code=code)


def _folder_hashes(folder: Path) -> dict:
    from .trust import config_hash, weights_hashes

    return {"configs": config_hash(folder), "weights": weights_hashes(folder)}


def added_hashes() -> dict:
    """{model folder: {"configs": sha256, "weights": {file: sha256}}} recorded by `models add`
    ({} when none or the list cannot be read: the registry warns about that itself)."""
    try:
        d = json.loads((config_dir() / FOLDERS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    h = d.get("hashes") if isinstance(d, dict) else None
    return {k: v for k, v in h.items() if isinstance(v, dict)} if isinstance(h, dict) else {}


def changed_since_add(folder: Path, weights: dict[str, str] | None = None) -> list[str]:
    """What differs from the hashes `models add` recorded for the folder: "configs" (configs/,
    scripts/, model.json, large_files.*) and weights files; [] when unchanged or not recorded.
    ``weights``: {file: sha256} already computed (only those files are compared then)."""
    from .trust import config_hash, weights_hashes

    rec = added_hashes().get(str(folder))
    if rec is None:
        return []
    try:
        configs = config_hash(folder)
        new_w = weights_hashes(folder) if weights is None else weights
    except UserError:
        return ["the folder (it cannot be hashed any more)"]
    out = ["configs"] if configs != rec.get("configs") else []
    old_w = rec.get("weights") if isinstance(rec.get("weights"), dict) else {}
    files = sorted(set(old_w) | set(new_w)) if weights is None else sorted(new_w)
    return out + [f for f in files if old_w.get(f) != new_w.get(f)]


def changed_message(mid: str, folder: Path, changed: list[str]) -> str:
    return (f"model {mid}: {', '.join(changed)} changed since `imaging-assist models add` recorded "
            f"{folder}; check the change, then `imaging-assist models add {folder}` again to accept it")


def is_program(card) -> bool:
    """True when the weights are TorchScript: a program that runs as it is loaded (its
    ``__setstate__`` methods can read and write files), so it needs the user's trust like a
    bundle's code, whatever the card says."""
    # a bundle's first weights file is loaded with torch.jit when it ends in .ts (loaders.load_model)
    return card.format == "torchscript" or (card.is_bundle and bool(card.weights)
                                            and str(card.weights[0].file).endswith(".ts"))
