"""Where models are found: folders with a model card or MONAI bundles.

Sources, looked up in this order (the first model with an id wins, later ones are listed
as shadowed):

1. folders the user added (``imaging-assist models add PATH``), newest first;
2. the user models folder ``<platformdirs user_config_dir>/models``;
3. ``weights/`` of the project checkout.

The configuration folder can be moved with ``IMAGING_ASSIST_CONFIG_DIR`` (tests use it).
A source folder may itself be a model folder or hold model folders one level down.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .card import CARD_FILE, ModelCard, ModelCardError, load_card

APP_NAME = "imaging-assist"
FOLDERS_FILE = "model_folders.json"


def config_dir() -> Path:
    env = os.environ.get("IMAGING_ASSIST_CONFIG_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def user_models_dir() -> Path:
    return config_dir() / "models"


def project_weights_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "weights"


def is_model_folder(p: Path) -> bool:
    from .bundle import is_bundle

    return (p / CARD_FILE).is_file() or is_bundle(p)


def read_card(folder: Path) -> ModelCard:
    from .bundle import derive_card, is_bundle

    if is_bundle(folder):
        return derive_card(folder)
    return load_card(folder)


@dataclass
class ModelEntry:
    folder: Path
    source: str  # "added", "user" or "project"
    card: ModelCard | None = None
    error: str | None = None  # the card could not be read or validated
    shadowed_by: str | None = None  # folder of the model with the same id that wins
    verify: list = field(default_factory=list)  # loaders.VerifyResult, after verify()

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
             "verified": self.verified, "error": self.error, "shadowed_by": self.shadowed_by}
        if self.verify:
            d["verify"] = [v.to_dict() for v in self.verify]
        return d


class Registry:
    def __init__(self, sources: list[tuple[Path, str]] | None = None):
        self._explicit = sources

    # ------------------------------------------------------------------ sources
    def added_folders(self) -> list[Path]:
        p = config_dir() / FOLDERS_FILE
        if not p.is_file():
            return []
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            return [Path(x) for x in d.get("folders", []) if isinstance(x, str)]
        except (OSError, ValueError, AttributeError) as e:
            raise UserError(f"cannot read the model folder list {p}: {e}") from None

    def sources(self) -> list[tuple[Path, str]]:
        if self._explicit is not None:
            return list(self._explicit)
        out = [(f, "added") for f in reversed(self.added_folders())]
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
        bad = [e for e in entries if e.error]
        if is_model_folder(p) and bad:
            raise ModelCardError(bad[0].error)
        folders = [f for f in self.added_folders() if f != p] + [p]
        cfg = config_dir()
        cfg.mkdir(parents=True, exist_ok=True)
        tmp = cfg / (FOLDERS_FILE + ".tmp")
        tmp.write_text(json.dumps({"folders": [str(f) for f in folders]}, indent=2), encoding="utf-8")
        os.replace(tmp, cfg / FOLDERS_FILE)
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
        out = []
        for f in folders:
            try:
                out.append(ModelEntry(f, source, card=read_card(f)))
            except UserError as e:
                out.append(ModelEntry(f, source, error=str(e)))
        return out

    def entries(self) -> list[ModelEntry]:
        seen: dict[str, ModelEntry] = {}
        out = []
        for root, source in self.sources():
            for e in self._scan_source(root, source):
                if e.card is not None:
                    if e.card.id in seen:
                        e.shadowed_by = str(seen[e.card.id].folder)
                    else:
                        seen[e.card.id] = e
                out.append(e)
        return out

    def get(self, id_or_path: str) -> ModelEntry:
        p = Path(id_or_path).expanduser()
        if os.sep in id_or_path or p.is_dir():
            if not p.is_dir() or not is_model_folder(p):
                raise UserError(f"{id_or_path} is not a model folder (no {CARD_FILE} or MONAI bundle)")
            return ModelEntry(p.resolve(), "path", card=read_card(p))
        all_e = self.entries()
        for e in all_e:
            if e.card is not None and e.card.id == id_or_path and e.shadowed_by is None:
                return e
        broken = [e for e in all_e if e.card is None and e.folder.name == id_or_path]
        if broken:
            raise UserError(broken[0].error)
        ids = sorted({e.card.id for e in all_e if e.card is not None})
        raise UserError(f"unknown model {id_or_path!r}; available: {', '.join(ids) or 'none'} "
                        "(see `imaging-assist models list`)")

    def verify_entry(self, e: ModelEntry) -> ModelEntry:
        from .loaders import verify

        if e.card is not None:
            e.verify = verify(e.card)
        return e

    def load(self, id_or_path: str, device="cpu"):
        from .loaders import load_model

        return load_model(self.get(id_or_path).card, device)
