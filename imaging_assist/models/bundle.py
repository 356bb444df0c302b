"""MONAI bundles: a model card derived from ``configs/metadata.json`` and the bundle's
network and pre/post-processing, parsed with :class:`monai.bundle.ConfigParser`.

The bundle runs "unchanged": its own transforms and inferer are used; only the file
transforms (LoadImage/SaveImage) are left out because the image is already in memory and
results are written by imaging-assist.  Nothing is downloaded: ``pretrained`` flags in the
network definition are switched off because the bundle's own weights replace them.

Code: a bundle config may contain Python (``$`` expressions, any ``_target_`` callable...).
:mod:`.bundle_code` finds it without running it; a bundle whose evaluated parts contain
code is parsed only when the user trusted that exact bundle (:mod:`.trust`, checked by
:func:`.loaders.load_model`); otherwise ConfigParser gets the pruned, code-free config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .bundle_code import (CONFIG_NAMES as _CONFIG_NAMES, IO_TRANSFORMS, RunPlan,
                          inference_config, read_config_file)
from .card import CARD_FILE, ModelCard, read_json_limited, validate_card
from .errors import ModelCardError, ModelLoadError

__all__ = ["is_bundle", "inference_config", "weights_file", "derive_card", "parse_bundle",
           "BundleRuntime", "IO_TRANSFORMS"]
_MODALITY = {"ct": "CT", "mr": "MR", "mri": "MR", "mammogram": "MG", "mammography": "MG",
             "mg": "MG", "us": "US", "ultrasound": "US", "xr": "DX", "x-ray": "DX", "cxr": "DX",
             "pet": "PT", "pt": "PT", "endoscopy": "ES", "regular": "OT", "rgb": "OT",
             "pathology": "SM", "sm": "SM"}


def is_bundle(folder: Path) -> bool:
    c = folder / "configs"
    return (c / "metadata.json").is_file() and any((c / n).is_file() for n in _CONFIG_NAMES)


def weights_file(folder: Path) -> str | None:
    for n in ("models/model.pt", "models/model.ts"):
        if (folder / n).is_file():
            return n
    return None


def _large_files(folder: Path) -> dict[str, tuple[str, str]]:
    """{path: (hash_type, hash_val)} from large_files.yml/.yaml/.json (PyYAML ``safe_load``:
    no Python tags are constructed; a file that cannot be read is a one-line error)."""
    p = next((folder / n for n in ("large_files.json", "large_files.yml", "large_files.yaml")
              if (folder / n).is_file()), None)
    if p is None:
        return {}
    d = read_config_file(p)
    items = d.get("large_files", []) if isinstance(d, dict) else []
    out: dict[str, tuple[str, str]] = {}
    for it in items if isinstance(items, list) else []:
        if isinstance(it, dict) and it.get("path") and it.get("hash_val"):
            path = str(it["path"])
            path = path[2:] if path.startswith("./") else path
            out[path] = (str(it.get("hash_type", "md5")).lower(), str(it["hash_val"]).lower())
    return out


def _slug(s: str) -> str:
    s = re.sub(r"[^a-z0-9._-]+", "_", s.lower()).strip("_.-")
    return (s or "bundle")[:64]


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}


def _channel_names(spec: dict) -> list[str]:
    cd = _dict(spec.get("channel_def"))
    try:
        names = [str(cd[k]) for k in sorted(cd, key=lambda k: int(k))]
    except (TypeError, ValueError):
        names = [str(v) for v in cd.values()]
    # the names become DICOM segment labels: a bundle's backslash or control character would
    # make its card invalid, so they are replaced (the card's check refuses them in a model.json)
    return [" ".join("".join(ch if ch.isprintable() else " " for ch in n.replace("\\", "/")).split())
            for n in names]


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
    meta = read_json_limited(mp, "bundle metadata")
    if not isinstance(meta, dict):
        raise ModelCardError(f"invalid bundle metadata {mp}: the top level must be an object")
    ndf = _dict(meta.get("network_data_format"))
    inp = _dict(_dict(ndf.get("inputs")).get("image")
                or next(iter(_dict(ndf.get("inputs")).values()), {}))
    outp = _dict(_dict(ndf.get("outputs")).get("pred")
                 or next(iter(_dict(ndf.get("outputs")).values()), {}))
    fmt = str(outp.get("format", "")).lower()
    task = "segmentation" if fmt == "segmentation" else "classification"
    shape = inp.get("spatial_shape") or []
    sd = len(shape) if isinstance(shape, list) and len(shape) in (2, 3) else None
    if sd is None:  # from the network definition (JSON or YAML, read as data only)
        cfg = read_config_file(inference_config(folder))
        nd = cfg.get("network_def") if isinstance(cfg, dict) else None
        v = nd.get("spatial_dims") if isinstance(nd, dict) else None
        sd = v if isinstance(v, int) and not isinstance(v, bool) and v in (2, 3) else None
    n_out = outp.get("num_channels", 1)
    if not (isinstance(n_out, int) and not isinstance(n_out, bool) and 1 <= n_out <= 1000):
        raise ModelCardError(f"invalid bundle metadata {mp}: network_data_format outputs "
                             f"num_channels must be an integer from 1 to 1000 (got {str(n_out)[:40]})")
    labels = _channel_names(outp) or [f"class_{i}" for i in range(n_out)]
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
        try:  # the first line is enough: read 64 KiB at most (the file could be endless)
            with open(folder / "LICENSE", "rb") as f:
                head = f.read(65536).decode("utf-8", errors="replace")
        except OSError:
            head = ""
        first = [ln.strip()[:200] for ln in head.splitlines() if ln.strip()]
        lic = first[0] if first else lic
    d = {
        "id": _slug(folder.name), "name": meta.get("name") or folder.name,
        "version": str(meta.get("version", "0")), "task": task, "modality": modality,
        "body_part": None, "spatial_dims": sd, "format": "monai_bundle",
        "weights": weights or [{"file": "models/model.pt", "hash_source": "missing"}],
        "labels": labels,
        "input": {"channels": inp.get("num_channels", 1) or 1, "axis_order": "col_row"},
        "output": {"activation": "softmax"},
        "metrics": [{"name": k, "value": v} for k, v in _dict(meta.get("eval_metrics")).items()
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


def parse_bundle(folder: Path, plan: RunPlan, trusted: bool, device: str = "cpu"):
    """(network_def module, BundleRuntime) from the bundle's inference config.

    ``plan`` comes from :func:`.bundle_code.run_plan` (from the bytes that were hashed).
    Without code in what runs, ConfigParser gets ``plan.pruned`` (nothing else of the bundle
    can run); with code, only when ``trusted`` (checked by the caller against the trust
    store), and then the config as written.  The network's size is estimated on the meta
    device before it is built."""
    from monai.bundle import ConfigParser
    import monai.transforms as mt

    from .architectures import check_network_size

    if plan.code and not trusted:  # the caller checks trust; this guards against misuse
        raise ModelLoadError(f"bundle {folder.name}: refusing to run untrusted bundle code")
    cfg_name = inference_config(folder).name
    config = plan.pruned if not plan.code else plan.config
    notes: list[str] = list(plan.notes)

    def new_parser():
        import copy

        p = ConfigParser()
        try:
            p.read_config(copy.deepcopy(config))
            if plan.code:  # trusted: as written, with its metadata
                p.read_meta(str(folder / "configs" / "metadata.json"))
        except Exception as e:  # noqa: BLE001 - any parse error is the bundle's, in one line
            raise ModelLoadError(f"bundle {folder.name}: cannot read {cfg_name}: "
                                 f"{_first_line(e)}") from None
        p["bundle_root"] = str(folder)
        import torch

        p["device"] = torch.device(device)
        for fid in plan.download_flags:
            p[fid] = False
        return p

    if plan.download_flags:
        notes.append(", ".join(plan.download_flags).replace("::", ".") + " switched off: the "
                     "bundle's own weights are loaded and nothing is downloaded")
    parser = new_parser()
    if "network_def" not in parser:
        raise ModelLoadError(f"bundle {folder.name}: {cfg_name} has no network_def")
    raw_key = parser.get("image_key", "image")
    key = raw_key if isinstance(raw_key, str) and not raw_key.startswith(("$", "@", "%")) else "image"

    if not plan.code:  # size estimate (meta device, nothing allocated) before the real build
        check_network_size(lambda: new_parser().get_parsed_content("network_def"),
                           f"bundle {folder.name}", "network_def")

    def comp(name, required):
        if name not in parser:
            if required:
                raise ModelLoadError(f"bundle {folder.name}: {cfg_name} has no {name}")
            return None
        try:
            return parser.get_parsed_content(name)
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"bundle {folder.name}: cannot build {name}: {_first_line(e)}") from None

    net = comp("network_def", True)
    pre = comp("preprocessing", True)
    post = comp("postprocessing", False)
    inferer = comp("inferer", False)
    if inferer is None:
        from monai.inferers import SimpleInferer

        inferer = SimpleInferer()

    def strip(c):
        ts = list(c.transforms) if isinstance(c, mt.Compose) else [c]
        kept = [t for t in ts if t is not None and type(t).__name__ not in IO_TRANSFORMS]
        dropped = [type(t).__name__ for t in ts if t is not None and type(t).__name__ in IO_TRANSFORMS]
        return mt.Compose(kept), dropped

    pre_c, d1 = strip(pre)
    post_c, d2 = strip(post) if post is not None else (None, [])
    if d1 or d2:
        notes.append("left out file transforms: " + ", ".join(d1 + d2))
    return net, BundleRuntime(parser, pre_c, post_c, inferer, key, "pred", notes)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
