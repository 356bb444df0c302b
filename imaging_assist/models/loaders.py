"""Verified weight loading: safetensors state_dict, TorchScript and MONAI bundles.

Safety rules (see docs/model_card.md):

* the bytes of every weights file are read once, hashed, compared with the model card and
  only then deserialised *from those same bytes* (no time-of-check/time-of-use gap);
* ``torch.load`` is only ever called with ``weights_only=True`` (:func:`_torch_load`);
* hashes are checked before anything is built: before the card's network is built (its
  size is first estimated on the meta device) and before a bundle config is parsed;
* a MONAI bundle whose evaluated parts contain code runs only when the user trusted that
  exact bundle (:mod:`.trust`), else :class:`ModelTrustError`;
* every failure is a :class:`ModelLoadError` (a ``UserError``) with a one-line message.
"""

from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .card import ModelCard, WeightsFile
from .errors import ModelLoadError, ModelTrustError, WeightsMismatchError

__all__ = ["LoadedModel", "ModelLoadError", "ModelTrustError", "WeightsMismatchError",
           "VerifyResult", "load_model", "read_verified", "sha256_file", "verify"]

_CHUNK = 1 << 20
# A weights file is read into memory once (hashed, then deserialised from the same bytes):
# refused above this size, which is more than architectures.MAX_PARAMETER_BYTES allows anyway.
MAX_WEIGHTS_BYTES = 3 << 30


@dataclass
class VerifyResult:
    file: str
    ok: bool
    algorithm: str
    expected: str | None
    actual: str | None
    message: str

    def to_dict(self) -> dict:
        return {"file": self.file, "ok": self.ok, "algorithm": self.algorithm,
                "expected": self.expected, "actual": self.actual, "message": self.message}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_bytes(card: ModelCard, wf: WeightsFile, data: bytes | None, path: Path) -> VerifyResult:
    if data is None:
        return VerifyResult(wf.file, False, "sha256", wf.sha256, None,
                            f"weights file {path} is missing")
    if wf.sha256:
        actual = hashlib.sha256(data).hexdigest()
        ok = actual == wf.sha256
        algo, exp = "sha256", wf.sha256
    elif wf.md5:
        actual = hashlib.md5(data, usedforsecurity=False).hexdigest()
        ok = actual == wf.md5
        algo, exp = "md5", wf.md5
    else:
        return VerifyResult(wf.file, False, "sha256", None, hashlib.sha256(data).hexdigest(),
                            f"no hash for {wf.file} in the model card of {card.id}: refusing to "
                            "load unverified weights (add its sha256 to model.json)")
    msg = ("ok" if ok else
           f"weights {wf.file} of model {card.id} do not match the {algo} in its "
           f"{wf.hash_source} (expected {exp[:12]}…, got {actual[:12]}…): the file is corrupt or "
           "was replaced, so it was not loaded")
    return VerifyResult(wf.file, ok, algo, exp, actual, msg)


def _read(path: Path) -> bytes | None:
    """The bytes of a weights file; refused from its stat (before reading) when it is not a
    regular file (/dev/zero, a pipe) or larger than any network that may be loaded."""
    import stat

    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ModelLoadError(f"weights {path} is not a regular file")
        if st.st_size > MAX_WEIGHTS_BYTES:
            raise ModelLoadError(f"weights {path} is larger ({st.st_size / 2**30:.1f} GiB) than the "
                                 f"limit of {MAX_WEIGHTS_BYTES / 2**30:.1f} GiB for a model")
        with open(path, "rb") as f:
            # the size from stat, plus one byte to see growth: read(n) reserves n bytes first,
            # so asking for the limit reserved 3 GiB for every small file
            data = f.read(st.st_size + 1)
        if len(data) != st.st_size:  # grew or shrank while being read
            raise ModelLoadError(f"weights {path} changed size while being read; try again when "
                                 "nothing is writing it")
        return data
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ModelLoadError(f"cannot read weights {path}: {e.strerror or e}") from None


def verify(card: ModelCard) -> list[VerifyResult]:
    """Hash every weights file of a card (does not load anything)."""
    out = []
    for wf in card.weights:
        p = card.folder / wf.file
        try:
            data = _read(p)
        except ModelLoadError as e:  # not a regular file, too big, unreadable
            out.append(VerifyResult(wf.file, False, "sha256", wf.sha256, None, str(e)))
            continue
        out.append(_check_bytes(card, wf, data, p))
    from ..validation.ood import verify_stats  # the OOD statistics are hashed in the card too

    o = verify_stats(card)
    if o is not None:
        out.append(VerifyResult(str((card.ood or {}).get("file", "ood")), o[0], "sha256", o[1], o[2], o[3]))
    from ..validation.sanity_file import SANITY_FILE, verify_sanity  # made with these weights? (a warning only)

    s = verify_sanity(card)
    if s is not None:
        out.append(VerifyResult(SANITY_FILE, s[0], "sha256", s[1], s[2], s[3]))
    return out


def read_verified(card: ModelCard, wf: WeightsFile) -> bytes:
    p = card.folder / wf.file
    data = _read(p)
    r = _check_bytes(card, wf, data, p)
    if not r.ok:
        raise WeightsMismatchError(r.message)
    return data


def _torch_load(data: bytes, what: str):
    """The only torch.load in imaging-assist: weights_only=True, from verified bytes."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors have many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{what} is not a plain PyTorch weights file that can be loaded "
                             f"with weights_only=True: {first[:200]}") from None


def _load_state_dict(net: nn.Module, sd: dict, what: str) -> None:
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelLoadError(f"{what} does not hold a state_dict of tensors")
    try:
        res = net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = " ".join(lines[1:3])[:300] if len(lines) > 1 else lines[0][:300]
        raise ModelLoadError(f"{what} does not fit the network in the model card: {detail}") from None
    del res


@dataclass
class LoadedModel:
    card: ModelCard
    network: nn.Module
    kind: str  # "state_dict", "torchscript" or "bundle"
    bundle: object | None = None  # bundle.BundleRuntime
    hashes: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    # the memory format run_model last put the weights in (None: as loaded)
    memory_format: torch.memory_format | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.card.id

    @property
    def supports_hooks(self) -> bool:
        """Layer hooks (Grad-CAM) do not fire inside TorchScript modules."""
        return not isinstance(self.network, torch.jit.ScriptModule)

    def to(self, device: torch.device) -> "LoadedModel":
        device = torch.device(device)
        if device != self.device:
            self.network.to(device)
            self.device = device
        return self


def load_model(card: ModelCard, device: str | torch.device = "cpu") -> LoadedModel:
    """Verify the hashes, then build and load the network (eval mode, on CPU first)."""
    if card.folder is None:
        raise ModelLoadError(f"model {card.id} has no folder")
    if not card.weights:
        raise ModelLoadError(f"model {card.id} lists no weights")
    hashes: dict[str, str] = {}
    notes: list[str] = []
    bundle_rt = None
    if card.format == "monai_bundle":
        from .bundle import parse_bundle

        wf = card.weights[0]
        data = read_verified(card, wf)  # verify before anything from the bundle is parsed
        hashes[wf.file] = hashlib.sha256(data).hexdigest()
        plan, trusted = _bundle_plan(card, hashes)
        # Pre/post-processing run on the CPU; only the network moves to the chosen device.
        net_def, bundle_rt = parse_bundle(card.folder, plan, trusted, "cpu")
        notes.extend(bundle_rt.notes)
        if wf.file.endswith(".ts"):
            _require_trust_for_program(card, hashes)
            net = _load_torchscript(data, f"{card.id}: {wf.file}")
            kind = "torchscript"
        else:
            sd = _torch_load(data, f"{card.id}: {wf.file}")
            if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
                sd = sd["model"]  # CheckpointLoader layout {"model": state_dict}
            _load_state_dict(net_def, sd, f"{card.id}: {wf.file}")
            net = net_def
            kind = "bundle"
    elif card.format == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load as st_load

        from .architectures import build_network

        sd: dict = {}
        for wf in card.weights:  # every hash first, then the network is built
            data = read_verified(card, wf)
            hashes[wf.file] = hashlib.sha256(data).hexdigest()
            try:
                part = st_load(data)
            except (SafetensorError, ValueError, RuntimeError) as e:
                raise ModelLoadError(f"{card.id}: {wf.file} is not a valid safetensors file: "
                                     f"{str(e).splitlines()[0][:200]}") from None
            dup = set(part) & set(sd)
            if dup:
                raise ModelLoadError(f"{card.id}: tensor {sorted(dup)[0]} is in more than one "
                                     "weights file")
            sd.update(part)
        net = build_network(card.architecture, card.id)
        _load_state_dict(net, sd, f"{card.id}: weights")
        kind = "state_dict"
    elif card.format == "torchscript":
        wf = card.weights[0]
        data = read_verified(card, wf)
        hashes[wf.file] = hashlib.sha256(data).hexdigest()
        _require_trust_for_program(card, hashes)
        net = _load_torchscript(data, f"{card.id}: {wf.file}")
        kind = "torchscript"
    else:  # validated in card.py; kept for a clear message if a new format is added there only
        raise ModelLoadError(f"model {card.id}: unsupported format {card.format!r}")
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    lm = LoadedModel(card, net, kind, bundle_rt, hashes, notes)
    return lm.to(torch.device(device))


def _bundle_plan(card: ModelCard, hashes: dict[str, str]):
    """(RunPlan, trusted) for a bundle whose weights were verified: its code is found
    without running it; code that would run needs the user's trust in this exact bundle
    (configs hashed from the bytes that are parsed, weights from the verified bytes)."""
    from .bundle_code import inference_config, run_plan
    from .card import read_json_limited
    from .trust import config_hash, is_trusted

    folder = card.folder
    inf = inference_config(folder)
    from .bundle_code import MAX_CONFIG_BYTES

    try:
        if not inf.is_file():
            raise ModelLoadError(f"bundle config {inf} is not a regular file")
        with open(inf, "rb") as f:
            cfg_bytes = f.read(MAX_CONFIG_BYTES + 1)  # run_plan refuses a longer one
    except OSError as e:
        raise ModelLoadError(f"cannot read {inf}: {e.strerror or e}") from None
    meta = read_json_limited(folder / "configs" / "metadata.json", "bundle metadata")
    plan = run_plan(folder, cfg_bytes, meta if isinstance(meta, dict) else None)
    if not plan.code:
        return plan, False
    weights = dict(hashes)
    for wf in card.weights:
        if wf.file not in weights:
            weights[wf.file] = sha256_file(folder / wf.file) if (folder / wf.file).is_file() else "missing"
    ch = config_hash(folder, {inf.relative_to(folder).as_posix(): cfg_bytes})
    if is_trusted(folder, weights, ch):
        return plan, True
    shown = "; ".join(str(i) for i in plan.code[:3])
    more = f" and {len(plan.code) - 3} more" if len(plan.code) > 3 else ""
    raise ModelTrustError(
        f"model {card.id}: the MONAI bundle {folder} contains code that would run when it is "
        f"loaded ({len(plan.code)} item{'s' if len(plan.code) != 1 else ''}: {shown}{more}); "
        f"nothing of it was run. If you trust it, look at it with `imaging-assist models show "
        f"{card.id}` and mark this exact bundle as trusted with `imaging-assist models trust "
        f"{card.id}`")


def _require_trust_for_program(card: ModelCard, hashes: dict[str, str]) -> None:
    """TorchScript weights are a program: loading one runs its code (``__setstate__`` can
    read and write files), so it loads only when the user trusted this exact model folder
    (card, configs and the verified weights bytes hashed, as for a bundle's code). A model
    this program built itself (``build.save_model_folder``) is trusted as it is written."""
    from .trust import config_hash, is_trusted

    weights = dict(hashes)
    for wf in card.weights:
        if wf.file not in weights:
            weights[wf.file] = sha256_file(card.folder / wf.file) if (card.folder / wf.file).is_file() else "missing"
    if is_trusted(card.folder, weights, config_hash(card.folder)):
        return
    raise ModelTrustError(
        f"model {card.id}: its weights {card.weights[0].file} are TorchScript, a program that runs when it is "
        f"loaded (it can read and write files); nothing of it was run. If you trust it, mark this exact model "
        f"as trusted with `imaging-assist models trust {card.id}`, or convert it to safetensors")


def _load_torchscript(data: bytes, what: str) -> nn.Module:
    import warnings

    try:
        with warnings.catch_warnings():
            # torch 2.14 marks TorchScript as deprecated; the format is still what many
            # exported models (and MONAI bundles' model.ts) use.
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
            return torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as e:  # noqa: BLE001
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{what} is not a valid TorchScript file: {first[:200]}") from None
