"""The training code lives in the package (issue 18): ``scripts/_training.py`` is a thin
re-export of :mod:`imaging_assist.training` (the training scripts and ``finetune`` call the same
function objects), and ``finetune`` no longer needs the source checkout's ``scripts/``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scripts_and_finetune_share_one_code_path(monkeypatch):
    import imaging_assist.training as T
    from imaging_assist.monitoring.finetune import training_module

    assert training_module() is T
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import _ct_nodule_data  # noqa: F401 - imports through _training
    import _training

    for name in ("fit", "predict", "preprocess_all", "grouped_split", "random_affine", "random_intensity",
                 "fit_temperature", "fold_temperature", "Log", "read_masks", "write_json", "plot_log",
                 "augment_2d", "dice_ce_loss", "validation_by_dice", "run_on_files", "mean_ci", "jsrt_split"):
        assert getattr(_training, name) is getattr(T, name), name
    assert _training.DATA == T.data_root() and _training.CACHE == T.cache_dir()
    src = (ROOT / "scripts" / "train_cxr_lung_seg.py").read_text()
    assert "def random_aspect" not in src and "from imaging_assist.training.segmentation import" in src


def test_the_training_package_imports_without_scripts_on_the_path():
    code = ("import sys; sys.path = [p for p in sys.path if not p.endswith('scripts')]; "
            "import imaging_assist.training as T, imaging_assist.monitoring.finetune as F, "
            "imaging_assist.monitoring.finetune_seg; assert F.training_module() is T; "
            "assert 'PySide6' not in sys.modules and '_training' not in sys.modules; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_a_training_script_still_starts():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_cxr_lung_seg.py"), "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--evaluate-only" in r.stdout, r.stderr
