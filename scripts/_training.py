"""Shared parts of the training scripts (``scripts/train_<id>.py``): a thin re-export of the
package's training code, :mod:`imaging_assist.training` (one code path with ``imaging-assist
finetune``), plus what only the scripts need: their command-line arguments, the start of a
run (threads, seed, device, ``weights/<id>``) and the OOD fit of ``scripts/fit_ood.py``.

Each script: fixed seed -> grouped, stratified split -> inputs made by the *engine's own*
preprocessing (``imaging_assist.inference.pipelines.model_input`` on the card, so training
and ``run_model`` cannot drift) -> augmentation on whole batches (torch ``affine_grid``) ->
AdamW + one-cycle schedule -> the epoch with the best validation score is kept -> metrics
with bootstrap CIs (``imaging_assist.evaluation``) -> model folder written with
``save_model_folder`` (sha256 in the card) plus ``metrics.json``, ``training_log.csv``,
``training_log.png`` and plots.

Runs on CPU (2 threads here) and on a CUDA GPU when one is present (``--device``).
Training data are read from ``../shared/data`` (``IMAGING_ASSIST_DATA`` overrides) and
preprocessed inputs are cached under ``.cache/training/`` (git-ignored).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imaging_assist.training import *  # noqa: E402,F401,F403 - the re-export
from imaging_assist.training import cache_dir, data_root, pick_device, set_seed  # noqa: E402

DATA = data_root()
CACHE = cache_dir()


def common_args(parser, epochs: int, batch_size: int, lr: float):
    parser.add_argument("--out", type=Path, default=None, help="model folder (default weights/<id>)")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--time-limit", type=float, default=None, help="stop after N seconds")
    return parser


def start(args, model_id: str) -> tuple[torch.device, Path]:
    """Common start of a training script: threads, seed, device, model folder."""
    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)
    out = args.out or ROOT / "weights" / model_id
    out.mkdir(parents=True, exist_ok=True)
    return pick_device(args.device), out


def fit_ood(model_id: str, out: Path) -> None:
    """Issue 14: fit the OOD statistics of the weights just written to ``out`` on their training
    split and write ``ood.safetensors`` + the card's ``ood`` block (scripts/fit_ood.py)."""
    import fit_ood as F

    F.fit_model(model_id, Path(out))
