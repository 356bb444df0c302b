"""Burned-in text: find it with OCR (Debian ``tesseract-ocr`` through pytesseract), black out each
box in every frame, and check by OCR again that nothing readable is left (no Qt).

Which files are checked (:func:`needs_check`): BurnedInAnnotation YES; when the attribute is
absent, the kinds that often carry text in the pixels: ultrasound, X-ray angiography / RF,
secondary capture (screen captures included), and any image whose ImageType says SCREEN or
CAPTURE.  BurnedInAnnotation NO is trusted (the modality asserted it).

How (:func:`clean_burned_in_text`): every frame (up to 8; longer cines: the per-pixel minimum
and maximum over all frames plus 8 frames evenly spaced, see :func:`_views`) is turned into an
8-bit grey picture (colour by luminance, palette through its lookup table, grey stretched
min..max), enlarged (3x below 700 px) with a white margin (tesseract misses small fonts and text at the edge), read twice
(bright pixels only, and inverted), and every word box with a letter or digit becomes a black
rectangle (+ a margin) in *all* frames.  Then the same pictures are read again; a file where any
word of two or more letters or digits is still found is not cleaned: the caller leaves it out
and says why.  Only pixels inside the boxes change; the array is written back uncompressed (lossless).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

US_CLASSES = ("1.2.840.10008.5.1.4.1.1.6.", "1.2.840.10008.5.1.4.1.1.3.")
SC_CLASSES = ("1.2.840.10008.5.1.4.1.1.7",)
XA_CLASSES = ("1.2.840.10008.5.1.4.1.1.12.",)
MARGIN = 3
BRIGHT = 240  # overlay text is drawn near full brightness
DETECT_CONF = 40  # a word this sure in the bright pixels is blacked out (erring towards removing)
SINGLE_CONF = 70  # ... when it is one letter or digit alone
DETECT_CONF_INVERTED = 60  # ... in the whole inverted picture (texture reads as letters there)
VERIFY_CONF = 70  # a word of 2+ letters/digits this sure after cleaning: the file is not clean
MAX_PASSES = 3
MAX_FRAMES = 8
PAD = 24  # white margin around every picture given to tesseract
NEIGHBOUR_CONF = 40  # a word this sure on the line above/below a text line is text too
MAX_NEIGHBOUR_PROBES = 12  # per pass: bounds the time on a picture full of false words
PROBE_CONF = 60  # lines next to a word read this surely are probed
LOSSY_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
                  "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.203"}


@dataclass
class Outcome:
    boxes: int = 0
    reason: str | None = None  # set: cannot be cleaned, leave the file out
    summary: str = ""
    rects: list = field(default_factory=list)  # (x0, y0, x1, y1) blacked out, margin included
    detail: str = ""  # the words still read: printed on this machine, never written to a file


def needs_check(ds) -> str | None:
    """Why this file's pixels must be checked for text, or None."""
    if "PixelData" not in ds:
        return None
    bia = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if bia == "YES":
        return "BurnedInAnnotation YES"
    if bia == "NO":
        return None
    sop = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", "")).upper()
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if modality == "US" or sop.startswith(US_CLASSES):
        return "ultrasound without BurnedInAnnotation"
    if modality in ("XA", "RF") or sop.startswith(XA_CLASSES):
        return f"{modality or 'XA'} without BurnedInAnnotation"
    if sop.startswith(SC_CLASSES):
        return "secondary capture without BurnedInAnnotation"
    if "SCREEN" in image_type or "CAPTURE" in image_type:
        return "screen capture without BurnedInAnnotation"
    return None


def _tesseract():
    import pytesseract

    if shutil.which(pytesseract.pytesseract.tesseract_cmd) is None:
        raise RuntimeError("tesseract is not installed (Debian package tesseract-ocr)")
    # the environment pytesseract starts tesseract with (its module's ``environ``, given to
    # Popen): OMP_THREAD_LIMIT=1 unless set.  Each read is a small picture, where tesseract's
    # OpenMP threads cost more than they bring, and two reads run at once (:func:`_read_all`).
    # Measured, a one-line strip on 2 cores: 0.30 s alone by default, 0.26 s with one thread;
    # two at once 0.42 s by default, 0.28 s with one thread each.
    if not isinstance(pytesseract.pytesseract.environ, _OneThreadEnv):
        pytesseract.pytesseract.environ = _OneThreadEnv()
    return pytesseract


class _OneThreadEnv(Mapping):
    """``os.environ`` as it is at each read, with OMP_THREAD_LIMIT=1 unless the user set it
    (this process's own environment stays unchanged: torch and worker processes never see it)."""

    def _env(self) -> dict:
        import os

        return {"OMP_THREAD_LIMIT": "1", **os.environ}

    def __getitem__(self, k):
        return self._env()[k]

    def __iter__(self):
        return iter(self._env())

    def __len__(self):
        return len(self._env())


def _read_all(pics, config: str) -> list[dict]:
    """``image_to_data`` of each PIL picture, in order; the reads run at once (each is a
    tesseract process of its own: the threads only wait on them).  The same words as one after
    the other, in about half the time on 2 cores (the de-identification of a folder with
    burned-in text spent 97% of its time waiting on tesseract, two reads of each picture)."""
    from concurrent.futures import ThreadPoolExecutor

    pt = _tesseract()

    def read(pil):
        return pt.image_to_data(pil, config=config, output_type=pt.Output.DICT)

    if len(pics) < 2:
        return [read(p) for p in pics]
    with ThreadPoolExecutor(len(pics), thread_name_prefix="ocr") as ex:
        return list(ex.map(read, pics))


def _frames(ds) -> np.ndarray:
    """(frames, rows, cols[, 3]) as stored after decoding (YBR converted to RGB)."""
    arr = ds.pixel_array
    n = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if n == 1:
        arr = arr[None]
    if arr.ndim != (4 if spp == 3 else 3):
        raise ValueError(f"unexpected pixel array shape {arr.shape}")
    return arr


def _grey8(frame: np.ndarray, ds) -> tuple[np.ndarray, np.ndarray]:
    """(luminance, brightness) as 8-bit pictures stretched to 0..255.  Brightness is the largest
    channel of a colour pixel (yellow or cyan overlay text is as bright as white there, while
    grey tissue is not); for grey pictures both are the same."""
    pi = str(ds.get("PhotometricInterpretation", "")).upper()
    if pi == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut
        frame = apply_color_lut(frame, ds)
    f = frame.astype(np.float32)
    if f.ndim == 3:
        mx = float(f.max()) or 1.0
        lum = (0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]) * (255.0 / mx)
        bright = f.max(axis=-1) * (255.0 / mx)
    else:
        lo, hi = float(f.min()), float(f.max())
        lum = (f - lo) * (255.0 / (hi - lo if hi > lo else 1.0))
        if pi == "MONOCHROME1":
            lum = 255.0 - lum
        bright = lum
    return (np.clip(lum, 0, 255).astype(np.uint8), np.clip(bright, 0, 255).astype(np.uint8))


def _scale(h: int, w: int) -> int:
    """Enlargement for tesseract, which reads overlay fonts of 10-13 px far better at 3x."""
    m = max(h, w)
    return 3 if m < 700 else 2 if m < 1400 else 1


def _prepare(pil, scale: int):
    """Enlarged, with a white margin of PAD pixels: tesseract misses text that touches the
    picture's edge (measured: a name 4 px from the top of a black band was not read at all
    without the margin, and read at confidence 80 with it)."""
    from PIL import Image, ImageOps

    if scale != 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.LANCZOS)
    return ImageOps.expand(pil, border=PAD, fill=255)


def _texty(text: str, conf: float) -> bool:
    """Whether a word tesseract reports could be overlay text.  Texture (speckle, vessels,
    edges) reads as short lower-case syllables ("a", "ae", "at", "ees") and lone characters;
    overlay text is upper case, digits or longer words.  Measured on the real XA cine (no text
    in it): every word read was of that kind, and each would have put a black box over the
    vessels."""
    alnum = sum(c.isalnum() for c in text)
    if alnum == 0 or (alnum == 1 and conf < SINGLE_CONF):
        return False
    letters = "".join(c for c in text if c.isalpha())
    if letters and letters.islower() and not any(c.isdigit() for c in text) and len(letters) <= 3:
        return False
    return True


def _words(pics: tuple[np.ndarray, np.ndarray], min_conf: int, min_conf_inverted: int | None):
    """Word boxes (x0, y0, x1, y1, text, conf) in the picture's coordinates.  Read twice: the
    brightest pixels alone (>= BRIGHT of 255, black on white: overlay text is drawn saturated,
    and tissue below the threshold no longer confuses tesseract), and the whole luminance
    inverted (dark text on a light ground, anti-aliased text), where texture makes tesseract
    see letters, so a higher confidence is asked there."""
    from PIL import Image

    lum, bright = pics
    h, w = lum.shape
    scale = _scale(h, w)
    out = []
    reads = [(np.where(bright >= BRIGHT, 0, 255).astype(np.uint8), min_conf)]
    if min_conf_inverted is not None:
        reads.append((255 - lum, min_conf_inverted))
    data = _read_all([_prepare(Image.fromarray(img), scale) for img, _ in reads], "--psm 11")
    for (_img, floor), d in zip(reads, data):
        for i, text in enumerate(d["text"]):
            text = (text or "").strip()
            try:
                conf = float(d["conf"][i])
            except (TypeError, ValueError):
                conf = -1
            if not text or conf < floor or not _texty(text, conf):
                continue
            x, y = (d["left"][i] - PAD) // scale, (d["top"][i] - PAD) // scale
            bw, bh = -(-d["width"][i] // scale), -(-d["height"][i] // scale)
            x, y = max(0, x), max(0, y)
            out.append((x, y, x + max(bw, 1), y + max(bh, 1), text, conf))
    return out


def _black_value(ds, arr: np.ndarray):
    pi = str(ds.get("PhotometricInterpretation", "")).upper()
    if pi == "MONOCHROME1":
        return arr.max()
    if pi == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut
        idx = np.arange(int(arr.max()) + 1)
        rgb = apply_color_lut(idx, ds).astype(np.float64)
        return arr.dtype.type(int(np.argmin(rgb.sum(axis=-1))))
    if arr.ndim == 4:
        return 0
    return arr.min()


def _views(arr: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The pictures OCR reads: every frame when there are at most MAX_FRAMES, otherwise the
    per-pixel minimum and maximum over all frames (text that stays put survives the minimum;
    the maximum holds every bright mark of any frame) and MAX_FRAMES frames evenly spaced,
    first and last included (tesseract takes about half a second a picture: reading every frame
    of a long cine twice would take minutes)."""
    n = arr.shape[0]
    if n <= MAX_FRAMES:
        return [(f"frame {i + 1}", arr[i]) for i in range(n)]
    idx = np.unique(np.linspace(0, n - 1, MAX_FRAMES).round().astype(int))
    return ([("minimum over frames", arr.min(axis=0)), ("maximum over frames", arr.max(axis=0))]
            + [(f"frame {i + 1}", arr[i]) for i in idx])


def find_text(ds, arr: np.ndarray | None = None, min_conf: int = DETECT_CONF,
              min_conf_inverted: int | None = DETECT_CONF_INVERTED):
    """Word boxes found: [(view, x0, y0, x1, y1, text, conf)]."""
    arr = _frames(ds) if arr is None else arr
    found = []
    seen = {}
    for name, view in _views(arr):
        key = hash(view.tobytes())  # identical frames (a still cine) are read once
        if key not in seen:
            seen[key] = _words(_grey8(view, ds), min_conf, min_conf_inverted)
        found += [(name, *b) for b in seen[key]]
    return found


def _strip_words(pics, b0: int, b1: int, s0: int, s1: int):
    """Words read in one horizontal strip as a single line of text (``--psm 7``), both pictures:
    [(x0, x1, text, conf, y0, y1)] in picture coordinates."""
    from PIL import Image

    lum, bright = pics
    out = []
    if b1 - b0 < 4 or s1 - s0 < 4:
        return out
    imgs = (np.where(bright[b0:b1, s0:s1] >= BRIGHT, 0, 255).astype(np.uint8), 255 - lum[b0:b1, s0:s1])
    for d in _read_all([_prepare(Image.fromarray(img), 3) for img in imgs], "--psm 7"):
        for i, text in enumerate(d["text"]):
            try:
                conf = float(d["conf"][i])
            except (TypeError, ValueError):
                conf = -1
            if (text or "").strip() and any(c.isalnum() for c in text):
                out.append((s0 + max(0, d["left"][i] - PAD) // 3,
                            s0 + -(-(d["left"][i] + d["width"][i] - PAD) // 3), text.strip(), conf,
                            b0 + max(0, d["top"][i] - PAD) // 3,
                            b0 + -(-(d["top"][i] + d["height"][i] - PAD) // 3)))
    return out


def _extend_line(pics, x0: int, y0: int, x1: int, y1: int) -> tuple[int, int]:
    """Widen a word box over the rest of its text line.  Sparse-text OCR of the whole picture
    often reads one word of a line drawn over bright tissue and misses its neighbour (measured:
    "DOE^JOHN" read as "DOE", "JOHN" left); the strip of that line, read again as one line of
    text on both pictures, finds the neighbours, and their boxes join.  Repeated until the box
    stops growing (at most 4 times)."""
    rows, cols = pics[0].shape
    h = max(1, y1 - y0)
    b0, b1 = max(0, y0 - MARGIN), min(rows, y1 + MARGIN)
    for _ in range(4):
        nx0, nx1 = x0, x1
        for wx0, wx1, _t, conf, _y0, _y1 in _strip_words(pics, b0, b1, max(0, x0 - 4 * h),
                                                         min(cols, x1 + 4 * h)):
            if conf >= DETECT_CONF and wx1 >= nx0 - 2 * h and wx0 <= nx1 + 2 * h:
                nx0, nx1 = min(nx0, wx0), max(nx1, wx1)
        if (nx0, nx1) == (x0, x1):
            break
        x0, x1 = nx0, nx1
    return max(0, x0), min(cols, x1)


def _neighbour_lines(pics, x0: int, y0: int, x1: int, y1: int):
    """Word boxes on the lines just above and below a text line: overlays come in blocks (name
    over ID over date), and sparse OCR of the whole picture can miss one line of the block
    (measured: "DOE^JOHN" above "4711-0815" read at confidence 1 and 55).  Each neighbour strip
    is read as one line; a word of 2+ letters/digits at confidence >= NEIGHBOUR_CONF counts."""
    rows, cols = pics[0].shape
    h = max(4, y1 - y0)
    found = []
    for b0, b1 in ((y0 - 2 * h, y0 - 1), (y1 + 1, y1 + 2 * h)):
        b0, b1 = max(0, b0), min(rows, b1)
        for wx0, wx1, text, conf, wy0, wy1 in _strip_words(pics, b0, b1, max(0, x0 - 2 * h),
                                                           min(cols, x1 + 2 * h)):
            if conf >= NEIGHBOUR_CONF and sum(c.isalnum() for c in text) >= 2 \
                    and _texty(text, conf) and wy1 - wy0 <= 1.5 * h:
                found.append((wx0, wy0, wx1, max(wy1, wy0 + 1), text, conf))
    return found


def clean_burned_in_text(ds) -> Outcome:
    """Black out the text in ``ds``'s pixels in place (the data set then holds uncompressed
    Explicit VR Little Endian pixel data), or say why it cannot be cleaned."""
    try:
        _tesseract()
    except Exception as e:  # noqa: BLE001 - no OCR: the file cannot be checked
        return Outcome(reason=f"cannot be checked: {e}")
    try:
        arr = _frames(ds).copy()
    except Exception as e:  # noqa: BLE001
        return Outcome(reason=f"pixels cannot be decoded ({type(e).__name__}: {e})")
    rows, cols = arr.shape[1], arr.shape[2]
    black = _black_value(ds, arr)
    done = np.zeros((rows, cols), bool)  # already blacked out
    max_h = max(24, rows // 10)  # taller "words" are texture or edges, not overlay text
    total = 0
    rects = []
    for n_pass in range(MAX_PASSES):
        new = []
        # later passes read the bright pixels only: in the inverted picture the edges of the
        # boxes just blacked out read as letters
        for w in find_text(ds, arr, DETECT_CONF, DETECT_CONF_INVERTED if n_pass == 0 else None):
            _v, x0, y0, x1, y1 = w[:5]
            if y1 - y0 > max_h or x1 - x0 > 0.8 * cols:
                continue
            if done[y0:y1, x0:x1].mean() > 0.5:
                continue  # read off the edge of a box already black
            new.append(w)
        if not new:
            break
        pics = {name: view for name, view in _views(arr)}
        # only a confidently read word anchors a block worth probing above and below
        queue = [(w[0], *w[1:5], w[6] >= PROBE_CONF) for w in new]
        probes = 0
        while queue:
            v, x0, y0, x1, y1, probe = queue.pop(0)
            if y1 - y0 > max_h or done[y0:y1, x0:x1].mean() > 0.5:
                continue
            grey = _grey8(pics[v], ds)
            x0, x1 = _extend_line(grey, x0, y0, x1, y1)
            if probe and probes < MAX_NEIGHBOUR_PROBES:
                probes += 1
                queue += [(v, *b[:4], b[5] >= PROBE_CONF)
                          for b in _neighbour_lines(grey, x0, y0, x1, y1)]
            # the box goes black in every frame: overlays usually stay put while a cine plays
            ys = slice(max(0, y0 - MARGIN), min(rows, y1 + MARGIN))
            xs = slice(max(0, x0 - MARGIN), min(cols, x1 + MARGIN))
            arr[:, ys, xs] = black
            done[ys, xs] = True
            rects.append((xs.start, ys.start, xs.stop, ys.stop))
            total += 1
    left = [w for w in find_text(ds, arr, VERIFY_CONF, VERIFY_CONF)
            if sum(c.isalnum() for c in w[5]) >= 2 and done[w[2]:w[4], w[1]:w[3]].mean() <= 0.5]
    if left:
        sample = ", ".join(repr(w[5]) for w in left[:3])
        return Outcome(boxes=total, reason=f"text still readable after blacking out {total} box(es) "
                                           f"({len(left)} word(s))", detail=f"read: {sample}")
    if total == 0:
        return Outcome(0, None, "checked by OCR: no text found")
    _write_back(ds, arr)
    return Outcome(total, None, f"{total} text box(es) blacked out; OCR finds no text after",
                   rects)


def _write_back(ds, arr: np.ndarray) -> None:
    from pydicom.uid import ExplicitVRLittleEndian

    pi = str(ds.get("PhotometricInterpretation", "")).upper()
    n_frames_attr = "NumberOfFrames" in ds
    if arr.ndim == 4:
        pi = "RGB"  # pydicom decodes YBR to RGB
    old_ts = ds.file_meta.get("TransferSyntaxUID")
    lossy = str(old_ts) in LOSSY_SYNTAXES
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    bits_stored = int(ds.get("BitsStored", arr.dtype.itemsize * 8))
    out = arr if arr.shape[0] > 1 else arr[0]
    if pi == "PALETTE COLOR":
        ds.PixelData = np.ascontiguousarray(out).tobytes()
    else:
        ds.set_pixel_data(np.ascontiguousarray(out), pi, bits_stored, generate_instance_uid=False)
    if n_frames_attr:
        ds.NumberOfFrames = arr.shape[0]
    if lossy:
        ds.LossyImageCompression = "01"  # the pixels were lossy-compressed once; said so
