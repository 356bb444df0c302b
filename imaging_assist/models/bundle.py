"""MONAI bundles: a model card derived from ``configs/metadata.json`` and the bundle's
network and pre/post-processing, parsed with :class:`monai.bundle.ConfigParser`.

The bundle runs "unchanged": its own transforms and inferer are used; only the file
transforms (LoadImage/SaveImage) are left out because the image is already in memory and
results are written by imaging-assist.  Nothing is downloaded: ``pretrained`` flags in the
network definition are switched off because the bundle's own weights replace them.

Note: a bundle config may contain Python expressions (``$...``) that ConfigParser runs;
only add bundles you trust (documented in docs/model_card.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .card import CARD_FILE, ModelCard, ModelCardError, validate_card

IO_TRANSFORMS = {"LoadImage", "LoadImaged", "SaveImage", "SaveImaged", "SaveClassificationd",
                 "ClassificationSaver", "WriteFileMapping", "WriteFileMappingd"}
_CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
_MODALITY = {"ct": "CT", "mr": "MR", "mri": "MR", "mammogram": "MG", "mammography": "MG",
             "mg": "MG", "us": "US", "ultrasound": "US", "xr": "DX", "x-ray": "DX", "cxr": "DX",
             "pet": "PT", "pt": "PT", "endoscopy": "ES", "regular": "OT", "rgb": "OT",
             "pathology": "SM", "sm": "SM"}


def is_bundle(folder: Path) -> bool:
    c = folder / "configs"
    return (c / "metadata.json").is_file() and any((c / n).is_file() for n in _CONFIG_NAMES)


def inference_config(folder: Path) -> Path:
    for n in _CONFIG_NAMES:
        p = folder / "configs" / n
        if p.is_file():
            return p
    raise ModelCardError(f"MONAI bundle {folder} has no configs/inference.json or .yaml")


def weights_file(folder: Path) -> str | None:
    for n in ("models/model.pt", "models/model.ts"):
        if (folder / n).is_file():
            return n
    return None


def _large_files(folder: Path) -> dict[str, tuple[str, str]]:
    """{path: (hash_type, hash_val)} from large_files.yml/.json.

    Hand-written reader for the simple YAML list the MONAI Model Zoo uses, because PyYAML is
    not a dependency of imaging-assist (the JSON variant is read with json).
    """
    out: dict[str, tuple[str, str]] = {}
    pj = folder / "large_files.json"
    if pj.is_file():
        try:
            items = json.loads(pj.read_text()).get("large_files", [])
        except (OSError, ValueError, AttributeError):
            items = []
    else:
        items = []
        py = next((folder / n for n in ("large_files.yml", "large_files.yaml")
                   if (folder / n).is_file()), None)
        if py is not None:
            cur: dict | None = None
            for line in py.read_text(errors="replace").splitlines():
                m = re.match(r"^\s*(-\s+)?([A-Za-z_]+)\s*:\s*(.*?)\s*$", line)
                if not m:
                    continue
                if m.group(1):
                    cur = {}
                    items.append(cur)
                if cur is not None:
                    cur[m.group(2)] = m.group(3).strip("\"'")
    for it in items:
        if isinstance(it, dict) and it.get("path") and it.get("hash_val"):
            out[str(it["path"]).lstrip("./")] = (str(it.get("hash_type", "md5")).lower(),
                                                 str(it["hash_val"]).lower())
    return out


def _slug(s: str) -> str:
    s = re.sub(r"[^a-z0-9._-]+", "_", s.lower()).strip("_.-")
    return (s or "bundle")[:64]


def _channel_names(spec: dict) -> list[str]:
    cd = spec.get("channel_def") or {}
    try:
        return [str(cd[k]) for k in sorted(cd, key=lambda k: int(k))]
    except (TypeError, ValueError):
        return [str(v) for v in cd.values()]


def derive_card(folder: Path) -> ModelCard:
    """A card for a bundle folder: its model.json when present, else one derived from
    configs/metadata.json (large_files.yml gives the published weights hash)."""
    folder = Path(folder)
    if (folder / CARD_FILE).is_file():
        from .card import load_card

        card = load_card(folder)
        if card.format != "monai_bundle":
            raise ModelCardError(f"invalid model card {folder / CARD_FILE}: the folder is a MONAI "
                                 "bundle, so format must be \"monai_bundle\"")
        return card
    mp = folder / "configs" / "metadata.json"
    try:
        meta = json.loads(mp.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelCardError(f"cannot read bundle metadata {mp}: {e}") from None
    ndf = meta.get("network_data_format") or {}
    inp = (ndf.get("inputs") or {}).get("image") or next(iter((ndf.get("inputs") or {}).values()), {})
    outp = (ndf.get("outputs") or {}).get("pred") or next(iter((ndf.get("outputs") or {}).values()), {})
    fmt = str(outp.get("format", "")).lower()
    task = "segmentation" if fmt == "segmentation" else "classification"
    shape = inp.get("spatial_shape") or []
    sd = len(shape) if len(shape) in (2, 3) else None
    if sd is None:
        try:
            sd = int(json.loads(inference_config(folder).read_text())["network_def"]["spatial_dims"])
        except Exception:  # noqa: BLE001 - yaml or no spatial_dims: fall through to the error
            sd = None
    labels = _channel_names(outp) or [f"class_{i}" for i in range(int(outp.get("num_channels", 1)))]
    raw_mod = str(inp.get("modality", "")).strip()
    modality = _MODALITY.get(raw_mod.lower(), raw_mod.upper() or "OT")
    wf = weights_file(folder)
    lf = _large_files(folder)
    weights = []
    if wf:
        w = {"file": wf, "hash_source": "large_files.yml"}
        ht, hv = lf.get(wf, ("", ""))
        if ht == "sha256":
            w["sha256"] = hv
        elif ht == "md5":
            w["md5"] = hv
        weights.append(w)
    lic = "see LICENSE"
    if (folder / "LICENSE").is_file():
        first = [ln.strip() for ln in (folder / "LICENSE").read_text(errors="replace").splitlines()
                 if ln.strip()]
        lic = first[0] if first else lic
    d = {
        "id": _slug(folder.name), "name": meta.get("name") or folder.name,
        "version": str(meta.get("version", "0")), "task": task, "modality": modality,
        "body_part": None, "spatial_dims": sd, "format": "monai_bundle",
        "weights": weights or [{"file": "models/model.pt", "hash_source": "missing"}],
        "labels": labels,
        "input": {"channels": int(inp.get("num_channels", 1) or 1), "axis_order": "col_row"},
        "output": {"activation": "softmax"},
        "metrics": [{"name": k, "value": v} for k, v in (meta.get("eval_metrics") or {}).items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)],
        "license": lic,
        "intended_use": meta.get("intended_use") or meta.get("description") or "not stated",
        "not_for_clinical_use": True,
        "data": {"training": str(meta.get("data_source", "")), "validation": ""},
        "description": meta.get("description", ""),
    }
    if sd is None:
        raise ModelCardError(f"bundle {folder}: cannot tell 2D from 3D (no spatial_shape in "
                             "metadata.json and no network_def.spatial_dims)")
    return validate_card(d, folder, source="configs/metadata.json")


@dataclass
class BundleRuntime:
    parser: object
    preprocessing: object  # monai Compose without file transforms
    postprocessing: object | None
    inferer: object
    image_key: str = "image"
    pred_key: str = "pred"
    notes: list[str] = field(default_factory=list)


def parse_bundle(folder: Path, device: str = "cpu"):
    """(network_def module, BundleRuntime) from the bundle's inference config."""
    from monai.bundle import ConfigParser
    import monai.transforms as mt

    from .loaders import ModelLoadError

    cfg = inference_config(folder)
    if cfg.suffix in (".yaml", ".yml"):
        import importlib.util

        if importlib.util.find_spec("yaml") is None:
            raise ModelLoadError(f"bundle {folder.name}: {cfg.name} needs the PyYAML package, "
                                 "which is not installed")
    parser = ConfigParser()
    try:
        parser.read_config(str(cfg))
        parser.read_meta(str(folder / "configs" / "metadata.json"))
    except Exception as e:  # noqa: BLE001 - any parse error is the bundle's, reported in one line
        raise ModelLoadError(f"bundle {folder.name}: cannot read {cfg.name}: {e}") from None
    notes: list[str] = []
    parser["bundle_root"] = str(folder)
    parser["device"] = f"$torch.device('{device}')"
    try:
        net_def = parser["network_def"]
    except KeyError:
        raise ModelLoadError(f"bundle {folder.name}: {cfg.name} has no network_def") from None
    if isinstance(net_def, dict):
        for k in ("pretrained", "pretrained_backbone"):
            if net_def.get(k) is True:
                parser[f"network_def#{k}"] = False
                notes.append(f"network_def.{k} switched off: the bundle's own weights are loaded "
                             "and nothing is downloaded")
    key = parser.get("image_key", "image") if isinstance(parser.get("image_key", "image"), str) else "image"

    def comp(name, required):
        if name not in parser:
            if required:
                raise ModelLoadError(f"bundle {folder.name}: {cfg.name} has no {name}")
            return None
        try:
            c = parser.get_parsed_content(name)
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"bundle {folder.name}: cannot build {name}: {e}") from None
        return c

    try:
        net = parser.get_parsed_content("network_def")
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"bundle {folder.name}: cannot build network_def: {e}") from None
    pre = comp("preprocessing", True)
    post = comp("postprocessing", False)
    inferer = comp("inferer", False)
    if inferer is None:
        from monai.inferers import SimpleInferer

        inferer = SimpleInferer()

    def strip(c):
        ts = list(c.transforms) if isinstance(c, mt.Compose) else [c]
        kept = [t for t in ts if type(t).__name__ not in IO_TRANSFORMS]
        dropped = [type(t).__name__ for t in ts if type(t).__name__ in IO_TRANSFORMS]
        return mt.Compose(kept), dropped

    pre_c, d1 = strip(pre)
    post_c, d2 = strip(post) if post is not None else (None, [])
    if d1 or d2:
        notes.append("left out file transforms: " + ", ".join(d1 + d2))
    return net, BundleRuntime(parser, pre_c, post_c, inferer, key, "pred", notes)
