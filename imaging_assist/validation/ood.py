"""Out-of-distribution (OOD) score of a model's own features: is this image like the ones the
model was trained on?

Method (``docs/ood.md``; chosen on the measurements written into each card's ``ood`` block):

* features: the model's activations at the card's ``ood.layers`` (e.g. ``layer3`` and
  ``layer4`` of a ResNet, the deepest encoder blocks of a UNet), each summarised per channel
  by its spatial mean and standard deviation, concatenated;
* ``mahalanobis``: class-conditional Mahalanobis distance with one shared covariance
  (Lee et al. 2018), the covariance shrunk by Ledoit-Wolf (scikit-learn), the score is the
  squared distance to the nearest class mean, divided by the feature dimension;
* ``knn``: distance of the L2-normalised features to the k-th nearest training feature
  (Sun et al. 2022), measured as the alternative;
* threshold: an order statistic of the in-distribution VALIDATION scores chosen by
  :func:`conformal_threshold` so that, with 90% confidence, at most 5% of future images like the
  training data are flagged (about 96% of validation images pass; the plain 95th percentile
  flags 5% only on average, and more than 5% in half of all test sets).

The statistics live in ``ood.safetensors`` beside the weights; the card holds its sha256 and
the file is refused (one-line :class:`OODStatsError`) when the bytes differ.  The file's own
metadata names the sha256 of the weights it was fitted with (``weights_sha256``): statistics of
other weights (another model's file of the same width, or a fit from before a retraining) are
refused too, since they pass the card's hash and would score every image on the wrong features.
The engine only scores here; :func:`check` turns a score into the result's ``ood`` block.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .ood_spec import METHODS, check_spec  # noqa: F401 - re-exported (torch-free: card validation)

__all__ = ["OODStatsError", "OODStats", "OODResult", "extract_features", "fit_mahalanobis",
           "fit_knn", "load_stats", "ood_spec", "check", "summarise_tiles", "METHODS",
           "OUTSIDE_TEXT", "STATS_FILE", "conformal_threshold", "threshold_rule_text",
           "weights_hash_status", "WEIGHTS_KEY"]

STATS_FILE = "ood.safetensors"
MAX_STATS_BYTES = 64 << 20  # the shipped files are < 1 MB; a bigger one is refused unread
OUTSIDE_TEXT = "outside what this model was trained on"
# metadata key (safetensors ``__metadata__`` here, top-level key of sanity.json) holding the sha256
# of the weights file the statistics / check were computed from (loaders.sha256_file)
WEIGHTS_KEY = "weights_sha256"
NO_WEIGHTS_HASH = "made without a weights hash"


class OODStatsError(UserError):
    """The OOD statistics of a model are missing, tampered with or malformed (one line)."""


@dataclass
class OODResult:
    """The ``ood`` block of a result: ``{score, threshold, flagged, reasons}``."""

    score: float | None
    threshold: float | None
    flagged: bool
    reasons: list[str] = field(default_factory=list)
    method: str | None = None

    def to_dict(self) -> dict:
        d = {"score": None if self.score is None else round(float(self.score), 4),
             "threshold": None if self.threshold is None else round(float(self.threshold), 4),
             "flagged": bool(self.flagged), "reasons": list(self.reasons)}
        if self.method:
            d["method"] = self.method
        return d


# --------------------------------------------------------------------------- features
def _named(net: torch.nn.Module, layers: list[str]) -> list[torch.nn.Module]:
    mods = dict(net.named_modules())
    missing = [n for n in layers if n not in mods]
    if missing:
        raise OODStatsError(f"OOD layer(s) {', '.join(missing)} not in the network")
    return [mods[n] for n in layers]


class FeatureHooks:
    """Forward hooks on ``layers`` that keep, for every forward pass while active, the (B, D)
    float64 features: per layer and channel the spatial mean and standard deviation of the
    activations, in layer order.  Used around the app's own forward pass, so the score costs
    no second pass (``with FeatureHooks(net, layers) as fh: net(x); fh.features()``)."""

    def __init__(self, net: torch.nn.Module, layers: list[str]):
        self.mods = _named(net, layers)
        self._grabbed: list = [None] * len(self.mods)
        self._batches: list[np.ndarray] = []
        self._handles: list = []

    def _hook(self, i):
        def f(_m, _inp, out):
            o = out.float().flatten(2)  # (B, C, HW)
            self._grabbed[i] = torch.cat([o.mean(2), o.std(2, unbiased=False)], 1)
            if i == len(self.mods) - 1:  # the deepest layer ends this pass's features
                self._batches.append(torch.cat(self._grabbed, 1).double().cpu().numpy())
        return f

    def __enter__(self):
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.mods)]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        return False

    def features(self) -> np.ndarray:
        return np.concatenate(self._batches) if self._batches else np.zeros((0, 0))


def forward_with_features(net: torch.nn.Module, x: torch.Tensor, layers: list[str]):
    """One forward pass of ``x`` returning (network output, (N, D) float64 features)."""
    with FeatureHooks(net, layers) as fh:
        out = net(x)
    return out, fh.features()


@torch.no_grad()
def extract_features(net: torch.nn.Module, x: torch.Tensor, layers: list[str],
                     batch_size: int = 64) -> np.ndarray:
    """(N, D) float64 features (:func:`forward_with_features`) of model inputs ``x`` (N, C, H, W)."""
    _named(net, layers)  # a missing layer is a one-line error before anything runs
    dev = next(net.parameters()).device
    out = []
    was_training = net.training
    net.eval()
    try:
        for s in range(0, len(x), batch_size):
            out.append(forward_with_features(net, x[s:s + batch_size].to(dev, torch.float32), layers)[1])
    finally:
        net.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0))


# --------------------------------------------------------------------------- fitting
def fit_mahalanobis(feats: np.ndarray, classes: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Class means and the shared Ledoit-Wolf precision of training features.

    ``classes`` None (segmenters): one class.  Features are first standardised per dimension
    (``center``/``scale``) so that the shrinkage target (a multiple of the identity) suits
    dimensions of very different size (means and standard deviations of several layers)."""
    from sklearn.covariance import LedoitWolf

    f = np.asarray(feats, np.float64)
    center = f.mean(0)
    scale = f.std(0) + 1e-6
    z = (f - center) / scale
    cl = np.zeros(len(z), int) if classes is None else np.asarray(classes)
    ks = np.unique(cl)
    means = np.stack([z[cl == k].mean(0) for k in ks])
    resid = z - means[np.searchsorted(ks, cl)]
    lw = LedoitWolf(assume_centered=True).fit(resid)
    return {"center": torch.from_numpy(center), "scale": torch.from_numpy(scale),
            "means": torch.from_numpy(means), "precision": torch.from_numpy(lw.precision_)}


def fit_knn(feats: np.ndarray, max_bank: int = 4000, seed: int = 0) -> dict[str, torch.Tensor]:
    """Memory bank of L2-normalised (standardised) training features for the kNN score."""
    f = np.asarray(feats, np.float64)
    center, scale = f.mean(0), f.std(0) + 1e-6
    z = (f - center) / scale
    if len(z) > max_bank:
        z = z[np.random.default_rng(seed).choice(len(z), max_bank, replace=False)]
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
    return {"center": torch.from_numpy(center), "scale": torch.from_numpy(scale),
            "bank": torch.from_numpy(z.astype(np.float32))}


def score(stats: dict[str, torch.Tensor], feats: np.ndarray, method: str, k: int = 10) -> np.ndarray:
    """OOD scores (higher = less like the training data) of (N, D) features."""
    f = np.asarray(feats, np.float64)
    d = int(stats["center"].shape[0])
    if f.ndim != 2 or f.shape[1] != d:
        # e.g. another model's statistics with a matching hash: numpy would broadcast or fail
        raise OODStatsError(f"OOD statistics are for {d} features, the network gives "
                            f"{f.shape[-1] if f.ndim else 0}; not used")
    z = (f - stats["center"].numpy()) / stats["scale"].numpy()
    if method == "mahalanobis":
        means, prec = stats["means"].numpy(), stats["precision"].numpy()
        d = np.stack([np.einsum("nd,de,ne->n", z - m, prec, z - m) for m in means], 1)
        return d.min(1) / z.shape[1]
    if method == "knn":
        bank = stats["bank"].numpy().astype(np.float64)
        zn = z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-12)
        dist = np.sqrt(np.maximum(2.0 - 2.0 * zn @ bank.T, 0.0))
        kk = min(k, bank.shape[0])
        return np.sort(dist, 1)[:, kk - 1]
    raise OODStatsError(f"unknown OOD method {method!r} (known: {', '.join(METHODS)})")


# --------------------------------------------------------------------------- card + file
def ood_spec(card) -> dict | None:
    """The card's ``ood`` block (raw dict) or None when the card has none."""
    spec = getattr(card, "ood", None)
    if spec is None:
        spec = (getattr(card, "raw", None) or {}).get("ood")
    return spec if isinstance(spec, dict) else None


@dataclass
class OODStats:
    method: str
    threshold: float
    layers: list[str]
    tensors: dict[str, torch.Tensor]
    k: int = 10
    weights_sha256: str | None = None  # None: an older file, made without a weights hash

    def scores(self, net: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
        """OOD scores of model inputs ``x`` (N, C, H, W) through ``net``."""
        feats = extract_features(net, x, self.layers)
        return score(self.tensors, feats, self.method, self.k)

    def result(self, s: float, reasons: list[str] | None = None) -> OODResult:
        return check(s, self.threshold, self.method, reasons)


def load_stats(card) -> OODStats | None:
    """The card's OOD statistics, hash-checked; None when the card has no ``ood`` block.

    Raises :class:`OODStatsError` (one line) when the file is missing, not a regular file,
    too big, differs from the card's sha256 or does not hold the tensors the method needs."""
    spec = ood_spec(card)
    if spec is None:
        return None
    probs = check_spec(spec)
    if probs:
        raise OODStatsError(f"model {card.id}: {'; '.join(probs)}")
    folder = Path(card.folder) if getattr(card, "folder", None) else None
    if folder is None:
        raise OODStatsError(f"model {card.id}: no folder for {spec['file']}")
    path = folder / spec["file"]
    try:
        st = path.stat()
    except OSError:
        raise OODStatsError(f"model {card.id}: OOD statistics {spec['file']} missing") from None
    import stat as _stat

    if not _stat.S_ISREG(st.st_mode) or st.st_size > MAX_STATS_BYTES:
        raise OODStatsError(f"model {card.id}: OOD statistics {spec['file']} is not a regular file "
                            f"under {MAX_STATS_BYTES >> 20} MiB")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != spec["sha256"]:
        raise OODStatsError(f"model {card.id}: OOD statistics {spec['file']} do not match the card's "
                            "sha256 (changed or damaged); not used")
    from safetensors.torch import load as st_load

    try:
        tensors = st_load(data)
    except Exception as e:  # noqa: BLE001 - a hash-matching but malformed file: one line
        raise OODStatsError(f"model {card.id}: OOD statistics {spec['file']} unreadable ({e})") from None
    need = {"mahalanobis": ("center", "scale", "means", "precision"),
            "knn": ("center", "scale", "bank")}[spec["method"]]
    missing = [n for n in need if n not in tensors]
    if missing:
        raise OODStatsError(f"model {card.id}: OOD statistics lack {', '.join(missing)}")
    bad = _malformed(tensors, need)
    if bad:
        raise OODStatsError(f"model {card.id}: OOD statistics {spec['file']}: {'; '.join(bad)}; not used")
    rec = _metadata(data).get(WEIGHTS_KEY)
    status, have = weights_hash_status(card, rec)
    if status == "other":
        raise OODStatsError(f"model {card.id}: OOD statistics {spec['file']} were fitted for other weights "
                            f"(sha256 {str(rec)[:12]}…, this model's {str(have)[:12]}…): not used; refit "
                            "them for these weights (scripts/fit_ood.py)")
    return OODStats(spec["method"], float(spec["threshold"]), list(spec["layers"]), tensors,
                    int(spec.get("k", 10)), rec if status != "none" else None)


def _metadata(data: bytes) -> dict:
    """The ``__metadata__`` strings of safetensors ``data`` (already parsed by safetensors: an
    8-byte little-endian header length, then the JSON header); {} when it has none."""
    import json

    try:
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + n]).get("__metadata__")
    except (ValueError, AttributeError, RecursionError):
        return {}
    return meta if isinstance(meta, dict) else {}


def weights_hash_status(card, recorded) -> tuple[str, str | None]:
    """Whether ``recorded`` (the ``weights_sha256`` of a file computed from a model's weights: the
    OOD statistics, ``sanity.json``) names this card's weights: ("ok" | "none" | "other", the
    card's weights sha256).  "none": an older file without the field; "unknown": the card names
    no weights to compare with (their own check fails then).  The card's hashes are compared,
    not the weights read again: loading and ``models verify`` check those against the bytes; a
    card with only an md5 (a bundle) has its weights hashed (:func:`sha256_file`)."""
    ws = getattr(card, "weights", None) or []
    have = [str(w.sha256).lower() for w in ws if getattr(w, "sha256", None)]
    if not have and getattr(card, "folder", None) is not None:
        from ..models.loaders import sha256_file

        have = [sha256_file(Path(card.folder) / w.file) for w in ws if (Path(card.folder) / w.file).is_file()]
    first = have[0] if have else None
    if not isinstance(recorded, str) or not recorded:
        return "none", first
    if not have:
        return "unknown", None
    return ("ok" if recorded.lower() in have else "other"), first


def _malformed(tensors: dict, need: tuple) -> list[str]:
    """What is wrong with the statistics' shapes and values: center/scale (D,), means and bank
    (K>=1, D), precision (D, D) symmetric and positive semi-definite; all finite.  A file
    with a matching hash but wrong shapes otherwise broadcast into meaningless scores."""
    c = tensors["center"]
    d = int(c.shape[0]) if c.ndim == 1 else 0
    if d < 1:
        return [f"center has shape {tuple(c.shape)}, not (D,)"]
    want = {"center": (d,), "scale": (d,), "means": (None, d), "bank": (None, d), "precision": (d, d)}
    bad = []
    for n in need:
        t, w = tensors[n], want[n]
        if t.ndim != len(w) or any(a is not None and a != b for a, b in zip(w, t.shape)) or 0 in t.shape:
            shape = "(" + ", ".join("K" if a is None else str(a) for a in w) + ("," if len(w) == 1 else "") + ")"
            bad.append(f"{n} has shape {tuple(t.shape)}, not {shape}")
        elif not torch.isfinite(t).all():
            bad.append(f"{n} has non-finite values")
    if bad:
        return bad
    if "scale" in need and not bool((tensors["scale"] > 0).all()):
        bad.append("scale is not positive")
    if "precision" in need:
        p = tensors["precision"].double().numpy()
        tol = 1e-6 * max(float(np.abs(p).max()), 1e-300)
        if not np.allclose(p, p.T, rtol=0, atol=tol):
            bad.append("precision is not symmetric")
        else:
            ev = np.linalg.eigvalsh(p)
            if ev.min() < -1e-6 * max(float(np.abs(ev).max()), 1e-300):
                bad.append("precision is not positive semi-definite")
    return bad


def check(s: float | None, threshold: float | None, method: str | None = None,
          reasons: list[str] | None = None) -> OODResult:
    """The ``ood`` block of one image: flagged when the score is above the threshold (or not
    finite), or when ``reasons`` (e.g. the card's population checks) name anything."""
    reasons = list(reasons or [])
    if s is not None and threshold is not None:
        if not math.isfinite(s):
            reasons.insert(0, "the OOD score is not finite")
        elif s > threshold:
            reasons.insert(0, f"image features unlike the training images (OOD score {s:.3g} "
                              f"> threshold {threshold:.3g})")
    return OODResult(None if s is None or not math.isfinite(s) else float(s), threshold,
                     bool(reasons), reasons, method)


def conformal_threshold(scores, alpha: float = 0.05, delta: float = 0.10) -> tuple[float, dict]:
    """The flagging threshold from in-distribution validation scores, with a training-conditional
    (PAC) conformal guarantee: with probability >= 1 - ``delta`` over the validation draw, at most
    ``alpha`` of future exchangeable in-distribution images score above it (Vovk 2012,
    "Conditional validity of inductive conformal predictors"; Angelopoulos & Bates 2021, 4.1).

    With the threshold at the r-th smallest of n continuous scores, the share of future images
    above it follows Beta(n + 1 - r, r); the smallest r with P(share > alpha) <= delta is taken.
    When even the largest score does not reach the confidence (too few validation images, e.g.
    33 give only 1 - 0.95**33 = 82%), the largest score is used and the achieved confidence is
    returned, so the card says so instead of claiming the bound.  Hand-written because no
    library ships this rule in a few lines (it is one Beta tail, scipy.stats.beta)."""
    from scipy.stats import beta

    s = np.sort(np.asarray(scores, np.float64))
    s = s[np.isfinite(s)]
    n = int(s.size)
    if n == 0:
        raise ValueError("no finite validation scores")
    r_all = np.arange(1, n + 1)
    conf = beta.cdf(alpha, n + 1 - r_all, r_all)  # P(future share above s_(r) <= alpha)
    ok = np.nonzero(conf >= 1 - delta)[0]
    i = int(ok[0]) if ok.size else n - 1
    info = {"alpha": alpha, "delta": delta, "n": n, "rank": i + 1,
            "validation_flagged": round(float((s > s[i]).mean()), 4),
            "confidence": round(float(conf[i]), 4), "bound_met": bool(ok.size)}
    return float(s[i]), info


def threshold_rule_text(info: dict) -> str:
    """The card's ``threshold_rule`` sentence for :func:`conformal_threshold`'s info."""
    base = (f"the validation score ranked {info['rank']} of {info['n']} from the lowest "
            f"({info['validation_flagged']:.1%} of validation images above it): ")
    if info["bound_met"]:
        return base + (f"with {1 - info['delta']:.0%} confidence at most {info['alpha']:.0%} of future "
                       f"in-distribution images are flagged (training-conditional conformal bound)")
    return base + (f"the largest validation score; {info['n']} validation images give only "
                   f"{info['confidence']:.0%} confidence that at most {info['alpha']:.0%} of future "
                   f"in-distribution images are flagged (the {1 - info['delta']:.0%} bound needs more)")


def summarise_tiles(scores: np.ndarray, threshold: float, method: str | None = None,
                    max_share: float = 0.5) -> dict:
    """Per-slide summary of per-tile scores: the share of tiles flagged; the slide is flagged
    when more than ``max_share`` of its tiles are (a few unusual tiles are expected)."""
    s = np.asarray(scores, np.float64)
    n = int(s.size)
    if n == 0:
        return {"score": None, "threshold": threshold, "flagged": False, "reasons": [],
                "tiles": 0, "tiles_flagged": 0, "share_flagged": None}
    flagged = ~np.isfinite(s) | (s > threshold)
    share = float(flagged.mean())
    reasons = []
    if share > max_share:
        reasons.append(f"{share:.0%} of {n} tiles unlike the training tiles (OOD score above "
                       f"threshold {threshold:.3g})")
    d = {"score": round(float(np.median(s[np.isfinite(s)])), 4) if np.isfinite(s).any() else None,
         "threshold": round(float(threshold), 4), "flagged": bool(reasons), "reasons": reasons,
         "tiles": n, "tiles_flagged": int(flagged.sum()), "share_flagged": round(share, 4)}
    if method:
        d["method"] = method
    return d


def verify_stats(card) -> tuple[bool, str | None, str | None, str] | None:
    """``models verify``: (ok, expected sha256, actual sha256, message) of the card's OOD
    statistics file, None when the card has no ``ood`` block.  Reads nothing but the file (and
    the weights of a card without their sha256, :func:`weights_hash_status`).  An older file
    without the weights' sha256 passes with a message saying so."""
    spec = ood_spec(card)
    if spec is None:
        return None
    try:
        st = load_stats(card)
    except OODStatsError as e:
        actual = None
        p = Path(card.folder) / str(spec.get("file", "")) if getattr(card, "folder", None) else None
        try:
            if p is not None and p.is_file() and p.stat().st_size <= MAX_STATS_BYTES:
                actual = hashlib.sha256(p.read_bytes()).hexdigest()
        except OSError:
            pass
        return False, spec.get("sha256"), actual, str(e)
    if st.weights_sha256 is None:  # an older file: used as before, but said
        return True, spec["sha256"], spec["sha256"], (
            f"OOD statistics {spec['file']} {NO_WEIGHTS_HASH}: cannot tell whether they were fitted for "
            "these weights; refit them (scripts/fit_ood.py) to record it")
    return True, spec["sha256"], spec["sha256"], "ok"


# --------------------------------------------------------------------------- inference hook
_CACHE: dict[tuple, OODStats | None] = {}
NO_STATS = "no OOD statistics in this model's card: images unlike its training data are not detected"


def stats_for(card) -> OODStats | None:
    """:func:`load_stats`, cached per card folder and sha256 (the file is read and hashed once)."""
    spec = ood_spec(card)
    if spec is None:
        return None
    # the card's weights hashes too: statistics cached for the old weights of a retrained card are
    # checked again against the new ones
    key = (str(getattr(card, "folder", "")), card.id, spec.get("sha256"), spec.get("file"),
           tuple(str(getattr(w, "sha256", "")) for w in getattr(card, "weights", None) or []))
    try:
        st = (Path(card.folder) / str(spec.get("file"))).stat()
        key += (st.st_mtime_ns, st.st_size)
    except (OSError, TypeError):
        pass
    if key not in _CACHE:
        _CACHE[key] = load_stats(card)  # raises OODStatsError; nothing cached then
    return _CACHE[key]


def withhold(decisions: dict | None, reason: str) -> None:
    """Threshold decisions lose ``positive`` (None) and say why: nothing acts on them."""
    for v in (decisions or {}).values():
        if isinstance(v, dict):
            v["positive"] = None
            v["withheld"] = reason


def ood_block(card, network, xs, unit_name: str = "slice", decisive: dict | None = None) -> dict:
    """The ``ood`` block for the model inputs ``xs`` (list of (C, H, W) tensors, one per image,
    slice or tile) of one result.  One input: its score.  Several: the median score, flagged
    when more than half are (``per_unit`` lists each).  A card without statistics gives an
    unflagged block that says so; a bad statistics file flags the result with the reason
    (its decision is then withheld: an unverified detector is not trusted to pass images)."""
    try:
        stats = stats_for(card)
    except OODStatsError as e:
        return {"score": None, "threshold": None, "flagged": True, "reasons": [str(e)]}
    if stats is None:
        return {"score": None, "threshold": None, "flagged": False, "reasons": [], "note": NO_STATS}
    if not hasattr(network, "named_modules") or isinstance(network, torch.jit.ScriptModule):
        return {"score": None, "threshold": stats.threshold, "flagged": False, "reasons": [],
                "note": "OOD score needs layer hooks, which this network does not support"}
    if xs is None or len(xs) == 0:
        return not_scored()
    x = torch.stack([torch.as_tensor(v) for v in xs]) if isinstance(xs, (list, tuple)) else xs
    try:
        s = stats.scores(network, x)
    except (OODStatsError, ValueError) as e:  # statistics that do not fit the features: never passed
        return _unscored(stats, e)
    return block_from_scores(stats, s, unit_name, decisive)


def _unscored(stats, e: Exception) -> dict:
    """The flagged block of a result whose score could not be computed (``e`` in one line)."""
    why = str(e).splitlines()[0] if str(e) else type(e).__name__
    if not isinstance(e, OODStatsError):
        why = f"OOD score failed ({why}): the statistics do not fit this model"
    return {"score": None, "threshold": stats.threshold, "flagged": True, "reasons": [why]}


def fused_hooks(card, network) -> FeatureHooks | None:
    """Hooks for scoring during the app's own fp32 forward pass, or None when the separate
    pass of :func:`ood_block` must run (no statistics, a bad file, no hook support)."""
    try:
        stats = stats_for(card)
    except OODStatsError:
        return None  # ood_block reports it
    if stats is None or not hasattr(network, "named_modules") or isinstance(network, torch.jit.ScriptModule):
        return None
    try:
        return FeatureHooks(network, stats.layers)
    except OODStatsError:
        return None


def block_from_features(card, feats: np.ndarray, unit_name: str = "slice",
                        decisive: dict | None = None) -> dict:
    """The ``ood`` block from features taken by :func:`fused_hooks` (same as :func:`ood_block`)."""
    stats = stats_for(card)
    try:
        s = score(stats.tensors, feats, stats.method, stats.k)
    except (OODStatsError, ValueError) as e:
        return _unscored(stats, e)
    return block_from_scores(stats, s, unit_name, decisive)


def decisive_units(p: np.ndarray, labels, decisions: dict | None, mean: bool) -> dict[str, tuple[str, list[int]]]:
    """For each label with a threshold decision, the aggregation ("max" / "mean") and the units
    (slices, 0-based) its probability comes from: with max aggregation the unit(s) holding the
    maximum of ``p`` (n_units, n_labels), with mean aggregation every unit."""
    out = {}
    for i, lab in enumerate(labels):
        if isinstance((decisions or {}).get(lab), dict):
            col = np.asarray(p)[:, i]
            out[lab] = (("mean", list(range(len(col)))) if mean
                        else ("max", [int(k) for k in np.flatnonzero(col == col.max())]))
    return out


def block_from_scores(stats, s, unit_name: str = "slice", decisive: dict | None = None) -> dict:
    """The ``ood`` block of per-unit scores ``s``.  ``decisive`` (:func:`decisive_units`): a
    series passed by the majority rule is still flagged when a decision's probability comes
    from a flagged unit (one photograph among films gave a series its "pneumonia positive")."""
    if len(s) == 1:
        return stats.result(float(s[0])).to_dict()
    d = summarise_tiles(s, stats.threshold, stats.method)
    d["reasons"] = [r.replace("training tiles", "training images").replace("tiles", f"{unit_name}s")
                    for r in d["reasons"]]
    d[f"{unit_name}s"] = d.pop("tiles")
    d[f"{unit_name}s_flagged"] = d.pop("tiles_flagged")
    d["per_unit"] = [None if not np.isfinite(v) else round(float(v), 4) for v in s]
    if decisive and not d["flagged"]:
        s = np.asarray(s, np.float64)
        bad = ~np.isfinite(s) | (s > stats.threshold)
        n = len(s)
        for lab, (how, units) in decisive.items():
            hit = [k for k in units if bad[k]]
            if not hit:
                continue
            which = ", ".join(str(k + 1) for k in hit)
            d["reasons"].append(f"the {lab} probability ({how} over {unit_name}s) "
                                f"{'comes from' if how == 'max' else 'includes'} {unit_name}{'s' if len(hit) > 1 else ''} {which} of {n}, unlike "
                                f"the training images (OOD score above threshold {stats.threshold:.3g})")
        d["flagged"] = bool(d["reasons"])
    return d


def attach(model, res, xs, unit_name: str = "slice", decisive: dict | None = None) -> dict:
    """Set ``res.ood`` (the results.json block) for a classification or segmentation result;
    a flagged classification's threshold decisions are withheld here already."""
    return attach_block(res, ood_block(model.card, model.network, xs, unit_name, decisive))


def attach_block(res, d: dict) -> dict:
    """Put an ``ood`` block on a result; when flagged, withhold its decisions and warn."""
    res.ood = d
    if d.get("flagged"):
        decisions = getattr(res, "decisions", None)
        withhold(decisions, OUTSIDE_TEXT)
        warns = getattr(res, "warnings", None)
        if isinstance(warns, list):  # a segmentation has no decision to withhold: not said
            warns.append(f"{OUTSIDE_TEXT}: " + "; ".join(d.get("reasons") or [])
                         + (" (decision withheld)" if decisions else ""))
    return d


def summary_note(d: dict, line: str = "") -> str:
    """CLI/report suffix for a results.json item whose ``ood`` is flagged ("" otherwise, or
    when ``line`` says it already)."""
    o = d.get("ood") if isinstance(d, dict) else None
    if not isinstance(o, dict) or not o.get("flagged") or OUTSIDE_TEXT in line:
        return ""
    why = "; ".join(o.get("reasons") or [])
    tail = "; decision withheld" if "probabilities" in d and d.get("kind") != "slide" else ""
    return f"; {OUTSIDE_TEXT}" + (f" ({why})" if why else "") + tail


def not_scored(note: str = "not scored: no model inputs were kept for the OOD score") -> dict:
    """The ``ood`` block of a result that could not be scored (never flagged by a score)."""
    return {"score": None, "threshold": None, "flagged": False, "reasons": [], "note": note}
