"""The training code shared by ``scripts/train_<id>.py`` and ``imaging-assist finetune``
(one code path; ``scripts/_training.py`` re-exports this): seeds and devices, the grouped
split, inputs made by the engine's own preprocessing (``inference.pipelines.model_input``, so
training and ``run_model`` cannot drift), batch augmentation, the AdamW + one-cycle loop that
keeps the best validation epoch, prediction, temperature scaling.  No Qt.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import random
import sys  # progress goes to stderr: stdout stays the command's result (finetune --json)
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# A source checkout: <root>/imaging_assist/training/core.py with <root>/scripts beside it.
_ROOT = Path(__file__).resolve().parents[2]
IN_CHECKOUT = (_ROOT / "scripts" / "_training.py").is_file()


def source_root() -> Path | None:
    """The source checkout this package runs from, or None when installed."""
    return _ROOT if IN_CHECKOUT else None


def data_root() -> Path:
    """The shared training data: ``IMAGING_ASSIST_DATA``, else ``../shared/data`` beside the
    checkout (an installed package without it gets a path that does not exist; callers say so)."""
    env = os.environ.get("IMAGING_ASSIST_DATA")
    if env:
        return Path(env)
    return _ROOT.parent / "shared" / "data"


def cache_dir() -> Path:
    """Preprocessed-input cache: ``.cache/training`` of the checkout (git-ignored), else the
    user data folder's ``training_cache``."""
    if IN_CHECKOUT:
        return _ROOT / ".cache" / "training"
    from ..userdirs import data_dir

    return data_dir() / "training_cache"


# --------------------------------------------------------------------------- set-up
def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_text(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def grouped_split(groups, strata, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> np.ndarray:
    """Split index per row (0, 1, 2...): whole groups go to one split, stratified by the
    group's (first) stratum, so no group straddles two splits."""
    groups = np.asarray(groups)
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    uniq, first = np.unique(groups, return_index=True)
    out = np.empty(len(groups), np.int64)
    g_split = {}
    for s in np.unique(strata[first]):
        gs = uniq[strata[first] == s]
        gs = gs[rng.permutation(len(gs))]
        cuts = np.round(np.cumsum(fractions)[:-1] * len(gs)).astype(int)
        for k, part in enumerate(np.split(gs, cuts)):
            for g in part:
                g_split[g] = k
    for i, g in enumerate(groups):
        out[i] = g_split[g]
    return out


# --------------------------------------------------------------------------- inputs
def preprocess_all(card, paths: list[Path], tag: str, cache: Path | None = None) -> torch.Tensor:
    """(N, C, H, W) float16 model inputs of ``paths`` through the card's preprocessing,
    cached in ``cache`` (default :func:`cache_dir`) keyed by the card's input block and the
    file list with each file's size and modification time (ns): a file replaced under the same
    name is read again, not served from the cache."""
    from imaging_assist.inference.images import read_image
    from imaging_assist.inference.pipelines import model_input

    def stamp(p) -> str:
        try:
            st = os.stat(p)
            return f"{p}\t{st.st_size}\t{st.st_mtime_ns}"
        except OSError:  # read_image below says what is wrong with it
            return f"{p}\t-\t-"

    key = hashlib.sha256(json.dumps(card.raw.get("input"), sort_keys=True).encode()
                         + "\n".join(map(stamp, paths)).encode()).hexdigest()[:16]
    cache = Path(cache) if cache is not None else cache_dir()
    f = cache / f"{tag}_{key}.pt"
    if f.exists():
        return torch.load(f, weights_only=True)
    xs = []
    t = time.perf_counter()
    for i, p in enumerate(paths):
        xs.append(model_input(card, read_image(p)).to(torch.float16))
        if i % 500 == 0:
            print(f"  preprocess {i}/{len(paths)} ({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
    x = torch.stack(xs)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(x, f)
    return x


def read_masks(paths: list[Path], size: tuple[int, int], mapping: dict[int, int]) -> torch.Tensor:
    """(N, H, W) int64 label maps: stored pixel value -> label index via ``mapping``
    (other values -> 0), resized with nearest neighbour to ``size`` (rows, cols)."""
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as im:
            a = np.asarray(im.convert("L"))
        lab = np.zeros(a.shape, np.int64)
        for v, k in mapping.items():
            lab[a == v] = k
        out.append(lab)
    return resize_labels(out, size)


def resize_labels(label_maps, size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) int64: 2D label maps (each on its own grid) resized with nearest neighbour
    to the model's ``size`` (rows, cols), the way the whole image is resized by the card."""
    out = []
    for lab in label_maps:
        t = torch.from_numpy(np.asarray(lab, np.int64))[None, None].float()
        # "nearest-exact": the source pixel whose centre is nearest (centre-aligned, as the
        # image's "area" resize); "nearest" took floor(i * scale), half a pixel off
        out.append(F.interpolate(t, size=tuple(size), mode="nearest-exact")[0, 0].long())
    return torch.stack(out)


# --------------------------------------------------------------------------- augmentation
def random_affine(x: torch.Tensor, g: torch.Generator, rot_deg=10.0, scale=(0.9, 1.1),
                  shift=0.06, flip_h=False, flip_v=False, rot90=False, masks=None):
    """Random rotation / scale / shift (+ optional flips, 90° turns) of a batch, bilinear
    for images (border padding), nearest for ``masks`` (N, H, W) with the same transform."""
    n = x.shape[0]
    ang = (torch.rand(n, generator=g) * 2 - 1) * rot_deg * np.pi / 180
    if rot90:
        ang = ang + torch.randint(0, 4, (n,), generator=g) * (np.pi / 2)
    s = torch.empty(n).uniform_(scale[0], scale[1], generator=g)
    sx = s * (torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if flip_h else 1.0)
    sy = s * (torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if flip_v else 1.0)
    tx, ty = [(torch.rand(n, generator=g) * 2 - 1) * shift * 2 for _ in range(2)]
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([torch.stack([cos / sx, -sin / sx, tx], 1),
                         torch.stack([sin / sy, cos / sy, ty], 1)], 1).to(x.device, torch.float32)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    xo = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    if masks is None:
        return xo
    m = F.grid_sample(masks[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                      align_corners=False)[:, 0].long()
    return xo, m


def random_intensity(x: torch.Tensor, g: torch.Generator, contrast=0.15, brightness=0.15,
                     gamma=0.0):
    """Per-image contrast (x * a) and brightness (+ b) in normalised units."""
    n = x.shape[0]
    a = 1 + (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * contrast
    b = (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * brightness
    return x * a.to(x.device) + b.to(x.device)


# --------------------------------------------------------------------------- loop
class Log:
    """Epoch rows -> CSV (rewritten every epoch, so a stopped run keeps its log)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows: list[dict] = []

    def add(self, **row) -> None:
        self.rows.append(row)
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(self.rows[0].keys()))
            w.writeheader()
            w.writerows(self.rows)
        print("  " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in row.items()), file=sys.stderr, flush=True)


def fit(net, x_train, y_train, *, loss_fn, augment, evaluate, epochs: int, batch_size: int,
        lr: float, weight_decay: float, device: torch.device, log: Log, seed: int,
        time_limit_s: float | None = None):
    """AdamW + OneCycleLR.  ``evaluate(net) -> dict`` with a "score" (higher is better);
    the state of the best epoch is returned with the history.  ``augment(xb, yb, gen)``."""
    net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps = (len(x_train) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps,
                                                pct_start=0.15)
    g = torch.Generator().manual_seed(seed)
    best, best_state, best_epoch = -np.inf, None, -1
    t0 = time.perf_counter()
    for ep in range(1, epochs + 1):
        net.train()
        perm = torch.randperm(len(x_train), generator=g)
        tot, seen = 0.0, 0
        te = time.perf_counter()
        for s in range(0, len(perm), batch_size):
            idx = perm[s:s + batch_size]
            if len(idx) < 2:
                continue
            xb, yb = augment(x_train[idx].float(), y_train[idx], g)
            xb, yb = xb.to(device), yb.to(device)
            loss = loss_fn(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
            seen += len(idx)
        net.eval()
        with torch.no_grad():
            ev = evaluate(net)
        score = ev.pop("score")
        log.add(epoch=ep, train_loss=round(tot / max(1, seen), 5), **{k: round(float(v), 5) for k, v in ev.items()},
                val_score=round(float(score), 5), lr=float(f"{sched.get_last_lr()[0]:.3g}"),
                epoch_s=round(time.perf_counter() - te, 1))
        if score > best:
            best, best_epoch = score, ep
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        if time_limit_s and time.perf_counter() - t0 > time_limit_s:
            print(f"  time limit reached after epoch {ep}", file=sys.stderr, flush=True)
            break
    net.load_state_dict(best_state)
    net.eval()
    return {"best_epoch": best_epoch, "best_val_score": float(best), "epochs_run": ep,
            "train_seconds": round(time.perf_counter() - t0, 1)}


@torch.no_grad()
def predict(net, x: torch.Tensor, device: torch.device, batch_size: int = 128) -> torch.Tensor:
    """Logits of the whole tensor, in batches."""
    net.eval()
    out = [net(x[s:s + batch_size].float().to(device)).float().cpu()
           for s in range(0, len(x), batch_size)]
    return torch.cat(out)


def fit_temperature(logits: torch.Tensor, y: torch.Tensor, bounds: tuple[float, float] = (0.25, 10.0),
                    info: dict | None = None) -> float:
    """Temperature scaling (Guo et al. 2017) on validation logits: one scalar T > 0
    minimising the NLL.  It changes calibration, not the ranking (AUC).

    T is kept within ``bounds`` (default 0.25-10): on a small or perfectly separated validation
    set the NLL keeps falling as T -> 0 (T ~ 0.01 was seen), and a T that small, folded into the
    head, saturates float32 probabilities to exactly 0 / 1 (ties that destroy the ranking).  The
    NLL is convex in 1/T, so the clamped value is the best T within the bounds.  ``info`` (a
    dict), when given, receives ``fitted`` (the unbounded optimum found), ``bounds`` and
    ``clamped`` (True when T was moved to a bound) so the caller can say so."""
    lo_t, hi_t = float(bounds[0]), float(bounds[1])
    logits = logits.detach().double()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    fitted = float(log_t.detach().exp())
    if not np.isfinite(fitted):
        fitted = lo_t if float(log_t.detach()) < 0 else hi_t
    t = min(max(fitted, lo_t), hi_t)
    if info is not None:
        info.update({"fitted": fitted, "bounds": [lo_t, hi_t], "clamped": t != fitted})
    return t


def fold_temperature(linear: torch.nn.Linear, t: float) -> None:
    """softmax(W x + b) / T == softmax((W/T) x + b/T): put T into the last layer so the
    shipped network (and its card) needs no extra step."""
    with torch.no_grad():
        linear.weight.div_(t)
        if linear.bias is not None:
            linear.bias.div_(t)




def read_rows(src: Path, column: str = "file") -> tuple[list[dict], list[Path]]:
    """labels.csv of a data set folder: its rows and the image paths in ``column``."""
    rows = list(csv.DictReader((Path(src) / "labels.csv").open()))
    return rows, [Path(src) / r[column] for r in rows]
