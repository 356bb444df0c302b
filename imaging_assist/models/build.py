"""Package a network as a model folder: weights + ``model.json`` with their sha256.

Used by model authors, the tests and ``scripts/bench_infer.py``.  The card dictionary is
validated before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .card import CARD_FILE, validate_card
from .loaders import sha256_file


def save_model_folder(folder: str | Path, card: dict, network: torch.nn.Module,
                      fmt: str = "safetensors", example_input: torch.Tensor | None = None) -> Path:
    """Write ``network`` in ``fmt`` ("safetensors" or "torchscript") and a validated card."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    card = dict(card)
    card["format"] = fmt
    if fmt == "safetensors":
        from safetensors.torch import save_file

        name = "model.safetensors"
        sd = {k: v.detach().contiguous().clone() for k, v in network.state_dict().items()}
        save_file(sd, str(folder / name))
    elif fmt == "torchscript":
        name = "model.ts"
        net = network.eval()
        import warnings

        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
            ts = torch.jit.trace(net, example_input) if example_input is not None else torch.jit.script(net)
            ts.save(str(folder / name))
    else:
        raise ValueError(f"unsupported format {fmt!r}")
    card["weights"] = [{"file": name, "sha256": sha256_file(folder / name)}]
    validate_card(card, folder)
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2), encoding="utf-8")
    if fmt == "torchscript":
        # TorchScript is a program and loads only when trusted (loaders._require_trust_for_program);
        # the one written here is the network this process just ran, so it is trusted as written
        from .trust import trust

        trust(folder)
    return folder
