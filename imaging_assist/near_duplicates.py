"""Group near-duplicate images: copies of one original that were rotated (any angle, about
the centre), zoomed about the centre, flipped and re-encoded (JPEG).

Made for data sets such as LC25000, whose tiles are augmented copies (Augmentor: random
rotation with the largest inner crop scaled back to full size, horizontal/vertical flips)
of a few originals and carry no original or slide id.  A split that puts copies of one
original into training and test leaks; group first, then split by group.

How (engine only, numpy/scipy/torch, no Qt):

1. Each image becomes a **log-polar map about its centre** (grey, lightly blurred; radii
   from 10 % to 49 % of the short side, i.e. inside the inscribed circle that every rotated
   or zoomed copy keeps).  A rotation by θ is a cyclic shift along the angle axis, a zoom by
   s a shift along the log-radius axis, a flip reverses the angle axis.  The 8 dihedral
   orientations (90° turns and flips) are special cases.
2. **Candidates**: normalised cross-correlation of the maps over all angle shifts, radius
   shifts up to ``max_log_zoom`` and both flip states (FFT, in blocks).  The peak gives the
   similarity and the transform (θ, s, flip).
3. **Verification**: the second image is warped with that transform (refined by a small
   search over angle and zoom) and compared with the first: NCC of half-resolution,
   high-passed colour pixels on the central disc.  Unrelated H&E tiles give about 0-0.15,
   copies mostly 0.4-1.  On the LC25000 lung subset a threshold of 0.2 gives group counts and
   a group-size distribution that match sampling 500 of 20 copies x 250 originals per class
   (about 220 groups per class, sizes 1-7).
4. Union-find over verified pairs -> group index per image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

N_RADII = 32
N_ANGLES = 64
R_MIN, R_MAX = 0.10, 0.49  # fractions of the short side


@dataclass
class Match:
    i: int
    j: int
    score: float          # log-polar NCC (candidate stage)
    ncc: float            # verified pixel NCC
    angle_deg: float      # i(x) = j(c + s R(angle) M (x - c)), M = flip or identity
    scale: float
    flip: bool


@dataclass
class Grouping:
    groups: np.ndarray                     # (N,) int group index, 0..n_groups-1
    matches: list[Match] = field(default_factory=list)   # verified pairs
    rejected: list[Match] = field(default_factory=list)  # candidates that failed verification

    @property
    def n_groups(self) -> int:
        return int(self.groups.max()) + 1 if len(self.groups) else 0

    def sizes(self) -> np.ndarray:
        return np.bincount(self.groups)


def to_gray(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img, np.float32)
    if a.ndim == 3:
        a = a[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    return a


def _radii(side: float) -> np.ndarray:
    return np.exp(np.linspace(np.log(R_MIN * side), np.log(R_MAX * side), N_RADII))


def log_polar(img: np.ndarray) -> np.ndarray:
    """(N_RADII, N_ANGLES) float32 log-polar map of an image (grey or RGB) about its centre,
    zero mean and unit variance."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    g = gaussian_filter(to_gray(img), 1.5 * min(img.shape[:2]) / 224.0)
    h, w = g.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    r = _radii(min(h, w))
    p = np.arange(N_ANGLES) * 2 * np.pi / N_ANGLES
    m = map_coordinates(g, [cy + r[:, None] * np.sin(p)[None], cx + r[:, None] * np.cos(p)[None]],
                        order=1, mode="nearest")
    m = m - m.mean()
    return (m / (m.std() + 1e-6)).astype(np.float32)


def _dlogr(side: float) -> float:
    return float(np.log(R_MAX / R_MIN) / (N_RADII - 1))


def candidate_scores(maps: np.ndarray, max_log_zoom: float = 0.6, block: int = 32,
                     max_angle_deg: float = 180.0, allow_flip: bool = True):
    """Peak log-polar NCC of every pair (upper triangle filled, both halves returned) and
    its (radius shift, angle shift, flip).  ``maps``: (N, N_RADII, N_ANGLES).
    ``max_angle_deg`` / ``allow_flip`` limit the transforms searched (e.g. ultrasound frames
    are never turned or mirrored, so only near-identity transforms are allowed there)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(maps, np.float32))
    n = len(x)
    nr, na = N_RADII, N_ANGLES
    max_shift = int(np.ceil(max_log_zoom / (np.log(R_MAX / R_MIN) / (nr - 1))))
    max_shift = min(max_shift, nr - 4)
    k = np.arange(2 * nr)
    shift = np.where(k < nr, k, k - 2 * nr)
    overlap = nr - np.abs(shift)
    w = np.where(np.abs(shift) <= max_shift, 1.0 / (np.maximum(overlap, 1) * na), 0.0)
    m = np.arange(na)
    ang_ok = np.minimum(m, na - m) * 360.0 / na <= max_angle_deg + 1e-9
    w = torch.from_numpy(w.astype(np.float32))[:, None]
    # a forbidden angle shift gets a large negative score so it never wins the max
    pen = torch.from_numpy(np.where(ang_ok, 0.0, -1e3).astype(np.float32))[None, :]
    pad = torch.zeros(n, 2 * nr, na)
    pad[:, :nr] = x
    f = torch.fft.rfft2(pad)
    # flipped angle axis with phi -> -phi (index m -> -m mod N_ANGLES)
    padf = torch.zeros(n, 2 * nr, na)
    padf[:, :nr] = torch.roll(torch.flip(x, [2]), 1, 2)
    ff = torch.fft.rfft2(padf)
    score = np.zeros((n, n), np.float32)
    arg = np.zeros((n, n, 3), np.int32)  # (radius shift, angle shift, flip)
    with torch.no_grad():
        for s in range(0, n, block):
            rows = slice(s, min(n, s + block))
            c0 = torch.fft.irfft2(f[rows].conj()[:, None] * f[None], s=(2 * nr, na)) * w + pen
            v0, i0 = c0.flatten(2).max(2)
            if allow_flip:
                c1 = torch.fft.irfft2(ff[rows].conj()[:, None] * f[None], s=(2 * nr, na)) * w + pen
                v1, i1 = c1.flatten(2).max(2)
                fl = v1 > v0
            else:
                v1, i1, fl = v0, i0, torch.zeros_like(v0, dtype=torch.bool)
            v, idx = torch.where(fl, v1, v0), torch.where(fl, i1, i0)
            score[rows] = v.numpy()
            ki = (idx // na).numpy()
            arg[rows, :, 0] = np.where(ki < nr, ki, ki - 2 * nr)
            arg[rows, :, 1] = (idx % na).numpy()
            arg[rows, :, 2] = fl.numpy().astype(np.int32)
    np.fill_diagonal(score, 0.0)
    return score, arg


def transform_params(arg, side: float) -> tuple[float, float, bool]:
    """(angle_deg, scale, flip) with i(x) = j(c + scale R(angle) M (x - c))."""
    k, m, fl = (int(v) for v in arg)
    return m * 360.0 / N_ANGLES, float(np.exp(k * _dlogr(side))), bool(fl)


def _prep(img: np.ndarray) -> np.ndarray:
    """Verification image: half resolution (2x2 mean), colour, high-pass (minus a Gaussian
    blur), so that smooth stain/background layout shared by unrelated tiles does not count."""
    from scipy.ndimage import gaussian_filter

    a = np.asarray(img, np.float32)
    if a.ndim == 2:
        a = a[..., None]
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    a = a[:h, :w].reshape(h // 2, 2, w // 2, 2, a.shape[2]).mean((1, 3))
    return a - gaussian_filter(a, (3, 3, 0))


def _ncc_at(pi: np.ndarray, pj: np.ndarray, angle_deg: float, scale: float, flip: bool) -> float:
    """NCC of ``pi`` and ``pj`` sampled at c + scale R(angle) M (x - c), on the central disc
    that stays inside ``pj``."""
    from scipy.ndimage import map_coordinates

    h, w = pi.shape[:2]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    radius = R_MAX * min(h, w) / max(1.0, scale) * 0.95
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    disc = dx * dx + dy * dy <= radius * radius
    dx, dy = dx[disc], dy[disc]
    if flip:
        dy = -dy
    t = np.deg2rad(angle_deg)
    ux = scale * (np.cos(t) * dx - np.sin(t) * dy)
    uy = scale * (np.sin(t) * dx + np.cos(t) * dy)
    v = np.stack([map_coordinates(pj[..., ch], [cy + uy, cx + ux], order=1, mode="nearest")
                  for ch in range(pj.shape[2])], 1)
    u = pi[disc]
    u = u - u.mean(0)
    v = v - v.mean(0)
    return float((u * v).sum() / (np.sqrt((u * u).sum() * (v * v).sum()) + 1e-9))


def verify_pair(pi: np.ndarray, pj: np.ndarray, arg, accept: float = 0.6,
                reject: float = 0.05) -> tuple[float, tuple[float, float, bool]]:
    """High-pass NCC of prepared images (:func:`_prep`) after the candidate transform, refined
    by coordinate search over angle (2°, 1°, 0.5° steps) and zoom (2 %, 1 %, 0.5 %) unless the
    first value is already clearly in (>= ``accept``) or out (< ``reject``)."""
    ang, sc, fl = transform_params(arg, min(pi.shape[:2]))
    best = _ncc_at(pi, pj, ang, sc, fl)
    if best >= accept or best < reject:
        return best, (ang, sc, fl)
    for st_a, st_s in ((2.0, 0.02), (1.0, 0.01), (0.5, 0.005)):
        improved = True
        while improved:
            improved = False
            for da, ds in ((st_a, 0.0), (-st_a, 0.0), (0.0, st_s), (0.0, -st_s)):
                v = _ncc_at(pi, pj, ang + da, sc * float(np.exp(ds)), fl)
                if v > best + 1e-4:
                    best, ang, sc, improved = v, ang + da, sc * float(np.exp(ds)), True
    return best, (ang, sc, fl)


class _UnionFind:
    def __init__(self, n: int):
        self.p = list(range(n))

    def find(self, a: int) -> int:
        while self.p[a] != a:
            self.p[a] = self.p[self.p[a]]
            a = self.p[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.p[max(ra, rb)] = min(ra, rb)


def group_near_duplicates(images, strata=None, *, candidate_threshold: float = 0.35,
                          max_candidates: int = 12, ncc_threshold: float = 0.2,
                          max_log_zoom: float = 0.6, max_angle_deg: float = 180.0,
                          allow_flip: bool = True, progress=None) -> Grouping:
    """Group index per image (copies of one original share it).

    ``images``: sequence of (H, W[, 3]) arrays (square-ish, same content framing).
    ``strata``: optional labels; only images of one stratum are compared (copies of one
    original carry one label, and it saves time).
    ``max_log_zoom``, ``max_angle_deg``, ``allow_flip``: the transforms searched (defaults: any
    rotation, flips, zoom up to e^0.6, as in LC25000; ultrasound frames are neither turned nor
    mirrored, see ``scripts/train_us_breast.py``).
    """
    n = len(images)
    strata = np.zeros(n, int) if strata is None else np.asarray(strata)
    maps = np.stack([log_polar(im) for im in images]) if n else np.zeros((0, N_RADII, N_ANGLES))
    prepped = [_prep(im) for im in images]
    uf = _UnionFind(n)
    matches, rejected = [], []
    for s in np.unique(strata):
        idx = np.nonzero(strata == s)[0]
        if len(idx) < 2:
            continue
        score, arg = candidate_scores(maps[idx], max_log_zoom, max_angle_deg=max_angle_deg,
                                      allow_flip=allow_flip)
        for a in range(len(idx)):
            order = np.argsort(-score[a])[:max_candidates]
            for b in order:
                if score[a, b] < candidate_threshold:
                    break
                if b == a:
                    continue
                i, j = int(idx[a]), int(idx[b])
                if i > j and score[b, a] >= candidate_threshold and a in np.argsort(-score[b])[:max_candidates]:
                    continue  # that pair is checked from the other side
                ncc, (ang, sc, fl) = verify_pair(prepped[i], prepped[j], arg[a, b])
                m = Match(i, j, float(score[a, b]), ncc, ang, sc, fl)
                if ncc >= ncc_threshold:
                    matches.append(m)
                    uf.union(i, j)
                else:
                    rejected.append(m)
            if progress:
                progress(a + 1, len(idx))
    roots = np.array([uf.find(i) for i in range(n)])
    _, groups = np.unique(roots, return_inverse=True)
    return Grouping(groups.astype(np.int64), matches, rejected)
