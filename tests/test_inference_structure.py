"""Structure of the inference engine (issue #12): small MONAI-style parts, no private MONAI
API, the public names other code imports from ``pipelines`` still there."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import imaging_assist

PKG = Path(imaging_assist.__file__).parent
MAX_LINES = 400
# every module that drives models: the inference package, explanations, slide tiling
CHECKED = sorted(list((PKG / "inference").rglob("*.py")) + list((PKG / "explain").rglob("*.py"))
                 + [PKG / "slides" / "tiling.py", PKG / "slides" / "analysis.py"])


def long_modules(files, limit=MAX_LINES) -> list[str]:
    return [f"{f.name}: {n} lines" for f in files
            if (n := len(f.read_text(encoding="utf-8").splitlines())) > limit]


def private_monai_uses(path: Path) -> list[str]:
    """``from monai.x import _y``, ``import monai.x._y``, ``monai.x._y`` attribute chains."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "monai":
            parts = node.module.split(".")
            bad += [f"{path.name}:{node.lineno} from {node.module} import {a.name}"
                    for a in node.names if a.name.startswith("_") or any(p.startswith("_") for p in parts)]
        elif isinstance(node, ast.Import):
            bad += [f"{path.name}:{node.lineno} import {a.name}" for a in node.names
                    if a.name.split(".")[0] == "monai" and any(p.startswith("_") for p in a.name.split("."))]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            chain, v = [node.attr], node.value
            while isinstance(v, ast.Attribute):
                chain.append(v.attr)
                v = v.value
            if isinstance(v, ast.Name) and v.id == "monai":
                bad.append(f"{path.name}:{node.lineno} monai.{'.'.join(reversed(chain))}")
    return bad


def test_no_inference_module_is_over_400_lines():
    assert (PKG / "inference" / "preprocess.py").is_file() and (PKG / "inference" / "placement.py").is_file()
    assert long_modules(sorted((PKG / "inference").rglob("*.py"))) == []


def test_no_private_monai_api():
    bad = [b for f in CHECKED for b in private_monai_uses(f)]
    assert bad == []


def test_the_checks_catch_what_they_look_for(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from monai.inferers.utils import _get_scan_interval\nimport monai\n"
                 "x = monai.inferers.utils._get_scan_interval\n" + "\n" * 400)
    assert len(private_monai_uses(f)) == 2
    assert long_modules([f]) == ["m.py: 403 lines"]


def test_pipelines_facade_keeps_every_name_imported_from_it():
    import imaging_assist.inference.pipelines as pl

    root = PKG.parent
    names = set()
    for d in ("imaging_assist", "ui", "scripts", "tests"):
        for f in (root / d).rglob("*.py"):
            try:
                tree = ast.parse(f.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("inference.pipelines"):
                    names |= {a.name for a in node.names}
    assert {"run_model", "RunOptions", "model_input", "InputError"} <= names
    for n in names | {"count_windows", "sliding_params", "card_transforms"}:
        assert hasattr(pl, n), n


@pytest.mark.parametrize("spatial,roi,overlap", [
    ((100, 90), [32, 32], 0.25), ((20, 20), [32, 32], 0.5), ((64, 65, 33), [32, 32, 16], 0.25),
    ((97, 50), [96, 48], [0.1, 0.3]), ((40, 40), [40, 8], 0.0)])
def test_count_windows_equals_monais_own_count(spatial, roi, overlap):
    """Progress counts the windows by a small documented function instead of MONAI's private
    ``_get_scan_interval``; it must agree with what ``sliding_window_inference`` really runs."""
    import torch
    from monai.inferers import sliding_window_inference

    from imaging_assist.inference.pipelines import count_windows

    calls = []

    def predictor(w):
        calls.append(w.shape[0])
        return w

    sliding_window_inference(torch.zeros((1, 1) + tuple(spatial)), roi, 1, predictor, overlap=overlap)
    assert count_windows(tuple(spatial), roi, overlap) == len(calls)
