"""Read the header of one DICOM instance into a small, picklable record.

Two readers produce the same :class:`InstanceRecord`:

* ``_fast_scan`` walks the elements of the common encodings (a Part 10 file in
  Explicit or Implicit VR Little Endian, native or encapsulated pixels) with ``struct``
  over the file's first bytes (read into memory, more while the walk needs more), keeps
  only the ~50 attributes the index and the volume builder need, and notes where the
  pixel data starts.  It is hand-written because pydicom builds a full ``Dataset`` for
  every element (about 1.6 ms for a CT slice header here), which alone is slower than the whole load target of the foundation
  issue; the fast walk takes a fraction of that.  It never guesses: on anything it does
  not fully understand (big endian, deflate, odd lengths, no preamble) it gives up and
  the file goes to pydicom.  ``tests/test_dicom_header.py`` checks that both readers agree
  on every file of the test data.  Measured by ``scripts/bench_load.py`` (issue 12): on the
  140-slice CT the walk takes ~25 ms against ~350-400 ms for
  ``dcmread(stop_before_pixels=True, specific_tags=...)``, more than the whole scan time
  saved, so it is kept.  Text with escape sequences or 8-bit bytes is decoded by pydicom's
  own converters (``pydicom.values``), never by hand.
* ``_pydicom_scan`` is the general reader (``dcmread(..., force=True)``) used for
  everything else.

Files are only ever opened in ``"rb"`` mode and read with ``read``/``pread``, never mapped:
a mapped file that another program truncates or rewrites while it is scanned (a copy, a PACS
receiver, an anonymiser working in place) kills the process with SIGBUS, while a read just
comes back short and the file becomes one problem line.
"""

from __future__ import annotations

import functools
import os
import stat
import struct
import threading
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import UserError


# pydicom is imported only when a file needs it (a folder of plain native files never does:
# that saves ~25 MB and its import time).  The first import runs under a lock: two scan
# threads importing pydicom at once can be handed a partially initialised module
# ("ImportError ... partially initialized module 'pydicom.charset'").
_PYDICOM_LOCK = threading.Lock()
_PYDICOM_READY = False


def ensure_pydicom() -> None:
    """Import the pydicom modules the readers use, once, under a lock (thread-safe)."""
    global _PYDICOM_READY
    if _PYDICOM_READY:
        return
    with _PYDICOM_LOCK:
        if _PYDICOM_READY:
            return
        import pydicom  # noqa: F401
        import pydicom.charset  # noqa: F401
        import pydicom.encaps  # noqa: F401
        import pydicom.errors  # noqa: F401
        import pydicom.filereader  # noqa: F401
        import pydicom.fileset  # noqa: F401
        import pydicom.multival  # noqa: F401
        import pydicom.pixels  # noqa: F401
        import pydicom.pixels.utils  # noqa: F401
        import pydicom.uid  # noqa: F401
        import pydicom.valuerep  # noqa: F401
        import pydicom.values  # noqa: F401
        _PYDICOM_READY = True

# pydicom is imported where it is used: the fast walk of plain files never needs it, and
# leaving it out of the import chain takes ~0.3 s off the viewer's start.

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
NATIVE_SYNTAXES = {IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE}
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

# Attributes kept in a record: (group, element) -> (keyword, VR used for implicit VR).
WANTED: dict[int, tuple[str, str]] = {
    0x00020002: ("MediaStorageSOPClassUID", "UI"),
    0x00020010: ("TransferSyntaxUID", "UI"),
    0x00080005: ("SpecificCharacterSet", "CS"),
    0x00080008: ("ImageType", "CS"),
    0x00080016: ("SOPClassUID", "UI"),
    0x00080018: ("SOPInstanceUID", "UI"),
    0x00080020: ("StudyDate", "DA"),
    0x00080030: ("StudyTime", "TM"),
    0x00080050: ("AccessionNumber", "SH"),
    0x00080060: ("Modality", "CS"),
    0x00080070: ("Manufacturer", "LO"),
    0x00081030: ("StudyDescription", "LO"),
    0x0008103E: ("SeriesDescription", "LO"),
    0x00100010: ("PatientName", "PN"),
    0x00100020: ("PatientID", "LO"),
    0x00100021: ("IssuerOfPatientID", "LO"),  # a patient is (issuer, ID): index._build_tree, nodules/growth.py
    0x00100030: ("PatientBirthDate", "DA"),
    0x00100040: ("PatientSex", "CS"),
    0x00101010: ("PatientAge", "AS"),
    0x00180015: ("BodyPartExamined", "CS"),
    0x00180050: ("SliceThickness", "DS"),
    0x00180086: ("EchoNumbers", "IS"),
    0x00180088: ("SpacingBetweenSlices", "DS"),
    0x00181063: ("FrameTime", "DS"),
    0x00181120: ("GantryDetectorTilt", "DS"),
    0x00181164: ("ImagerPixelSpacing", "DS"),
    0x00182010: ("NominalScannedPixelSpacing", "DS"),
    0x00185101: ("ViewPosition", "CS"),
    0x0020000D: ("StudyInstanceUID", "UI"),
    0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00200011: ("SeriesNumber", "IS"),
    0x00200012: ("AcquisitionNumber", "IS"),
    0x00200013: ("InstanceNumber", "IS"),
    0x00200020: ("PatientOrientation", "CS"),  # projection images' orientation letters
    0x00200032: ("ImagePositionPatient", "DS"),
    0x00200037: ("ImageOrientationPatient", "DS"),
    0x00200052: ("FrameOfReferenceUID", "UI"),  # linked scrolling between series (viewing.py)
    0x00200100: ("TemporalPositionIdentifier", "IS"),
    0x00201041: ("SliceLocation", "DS"),
    0x00280002: ("SamplesPerPixel", "US"),
    0x00280004: ("PhotometricInterpretation", "CS"),
    0x00280006: ("PlanarConfiguration", "US"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280030: ("PixelSpacing", "DS"),
    0x00280034: ("PixelAspectRatio", "IS"),
    0x00280100: ("BitsAllocated", "US"),
    0x00280101: ("BitsStored", "US"),
    0x00280102: ("HighBit", "US"),
    0x00280103: ("PixelRepresentation", "US"),
    0x00281050: ("WindowCenter", "DS"),
    0x00281051: ("WindowWidth", "DS"),
    0x00281052: ("RescaleIntercept", "DS"),
    0x00281053: ("RescaleSlope", "DS"),
    0x00281054: ("RescaleType", "LO"),
    0x00281055: ("WindowCenterWidthExplanation", "LO"),
    0x00281056: ("VOILUTFunction", "CS"),
    0x20500020: ("PresentationLUTShape", "CS"),
}
KEYWORDS = [kw for kw, _ in WANTED.values()]

# Presence of these makes the volume builder take the full pydicom path for the file.
FLAG_TAGS: dict[int, str] = {
    0x00283000: "ModalityLUTSequence",
    0x00283010: "VOILUTSequence",
    0x00281201: "RedPaletteColorLookupTableData",
    0x00281221: "SegmentedRedPaletteColorLookupTableData",
    0x52009229: "SharedFunctionalGroupsSequence",
    0x52009230: "PerFrameFunctionalGroupsSequence",
    0x00041220: "DirectoryRecordSequence",
    0x60003000: "OverlayData",
}

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_TEXT_VRS = {"PN", "LO", "SH", "ST", "LT", "UT", "UC"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010


class HeaderError(UserError):
    """The file is not readable DICOM; the message is one line for the user."""


@dataclass
class InstanceRecord:
    """What the index and the volume builder need to know about one instance."""

    path: str  # file on disk, or the zip file for zip members
    member: str | None = None  # name inside a zip
    tags: dict[str, Any] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)
    transfer_syntax: str = ""
    pixel_offset: int | None = None  # file offset of the Pixel Data value (native, on disk)
    pixel_length: int | None = None  # bytes of the value, None when undefined (encapsulated)
    has_pixels: bool = False
    encapsulated: bool = False
    file_size: int = 0
    # (st_size, st_mtime_ns, st_ino, st_dev) of the file when its header was read; every later
    # read (read_dataset, the loader's native path) refuses a file that no longer has it, since
    # the record (pixel offset, sizes, rescale) would then describe another file.  None: not
    # known (zip members, records made by hand): not checked.
    file_identity: tuple[int, int, int, int] | None = None
    # A zip member's CRC-32 from the archive's central directory when it was scanned: a member
    # rewritten to the same size since is refused too (its size alone would not tell).
    member_crc: int | None = None
    fast: bool = False  # read by the fast walk
    notes: list[str] = field(default_factory=list)
    # Bytes from the start of the Pixel Data value to the end of the file (or zip member);
    # None when unknown.  index.check_record bounds every allocation by it.
    pixel_available: int | None = None
    # Encapsulated pixel data, from walking the item headers (values are not read):
    # fragments after the Basic Offset Table, BOT entries, fragment bytes, and a one-line
    # reason when the items are malformed or run past the end.  None when not walked.
    fragments: int | None = None
    offset_table_entries: int | None = None
    fragment_bytes: int | None = None
    fragment_error: str | None = None
    # What the first compressed frame says about itself (rows, columns, samples; segments
    # for RLE), for index.check_record to compare with the attributes.  None when unknown.
    codestream: dict | None = None

    # convenience accessors ---------------------------------------------------
    def get(self, keyword: str, default=None):
        v = self.tags.get(keyword)
        return default if v is None or v == "" else v

    @property
    def display_path(self) -> str:
        return f"{self.path}!{self.member}" if self.member else self.path

    @property
    def rows(self) -> int:
        return int(self.get("Rows", 0))

    @property
    def columns(self) -> int:
        return int(self.get("Columns", 0))

    @property
    def frames(self) -> int:
        try:
            return max(1, int(self.get("NumberOfFrames", 1)))
        except (TypeError, ValueError):
            return 1

    @property
    def samples(self) -> int:
        return int(self.get("SamplesPerPixel", 1))

    @property
    def bits_allocated(self) -> int:
        return int(self.get("BitsAllocated", 16))

    def expected_pixel_bytes(self) -> int:
        n = self.rows * self.columns * self.frames * self.samples
        if self.bits_allocated == 1:
            return (n + 7) // 8
        return n * (self.bits_allocated // 8)


# --------------------------------------------------------------------------- fast walk
class _GiveUp(Exception):
    pass


class _Truncated(_GiveUp):
    """The walk ran off the end of the buffer (for a zip member prefix: read more)."""


def _decode_value(raw: bytes, vr: str, charsets: Callable[[], list[str] | None]) -> Any:
    if vr in ("US", "SS", "UL", "SL", "FL", "FD"):
        fmt = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d"}[vr]
        size = struct.calcsize(fmt)
        n = len(raw) // size
        if n == 0 or n * size != len(raw):
            raise _GiveUp(f"{vr} value of {len(raw)} bytes")
        vals = struct.unpack_from("<" + fmt * n, raw)
        return vals[0] if n == 1 else list(vals)
    if vr in _TEXT_VRS and (0x1B in raw or any(b > 127 for b in raw)):
        # Escape sequences (ISO 2022) or 8-bit bytes: pydicom's own converters decode them,
        # so the record holds exactly what pydicom would show (no hand-written charset code).
        return _decode_text(raw, vr, charsets() or ["iso8859"])
    text = raw.decode("latin-1")
    text = text.rstrip(" \x00")
    if vr in ("DS", "IS"):
        parts = [p.strip() for p in text.split("\\")]
        try:
            vals = [float(p) if vr == "DS" else int(float(p)) for p in parts if p]
        except ValueError:
            raise _GiveUp(f"bad {vr} value {text!r}")
        if vr == "IS" and any(p and not p.lstrip("+-").isdigit() for p in parts):
            raise _GiveUp(f"bad IS value {text!r}")  # "1.5", "1e3": let pydicom say what it is
        if not vals:
            return None
        return vals[0] if len(vals) == 1 else vals
    if vr not in ("LT", "ST", "UT") and "\\" in text:
        return [p.strip(" \x00") for p in text.split("\\")]
    return text.strip(" \x00")


def _decode_text(raw: bytes, vr: str, encodings: list[str]) -> Any:
    ensure_pydicom()
    from pydicom import values as V
    if vr == "PN":
        v = V.convert_PN(raw, encodings)
    elif vr in ("LT", "ST", "UT"):
        v = V.convert_single_string(raw, encodings, vr)
    else:
        v = V.convert_text(raw, encodings, vr)
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        vals = [str(x).strip(" \x00") for x in v]
        return vals if len(vals) != 1 else vals[0]
    return str(v).strip(" \x00")


#: End of the record note that names text attributes whose characters beyond ASCII were read
#: without a usable Specific Character Set (none declared or an unknown term: pydicom reads the
#: bytes as Latin-1, a guess: UTF-8 "Müller" shows as "MÃ¼ller") or whose bytes the declared set
#: cannot decode (replacement characters).  The decoding is pydicom's and stays as it is; the
#: note lets the viewer and the browser mark the name and the DICOM export warn (charset_doubt).
CHARSET_DOUBT = "text may be wrong"
_KW_VR = dict(WANTED.values())


def _charset_doubt(terms: list[str], text: str) -> str | None:
    """Why the non-ASCII ``text`` read under the Specific Character Set ``terms`` ([] when
    absent) cannot be trusted; None when it can."""
    declared = [t for t in terms if t]
    if "\ufffd" in text:
        return f"not valid in the declared character set {'/'.join(declared) or 'ISO_IR 6'}"
    if all(t in ("ISO_IR 6", "ISO 2022 IR 6") for t in declared):
        return "character set not declared (read as Latin-1)"
    unknown = _unknown_terms(tuple(declared))
    return f"unknown character set {'/'.join(unknown)} (read as Latin-1)" if unknown else None


@functools.lru_cache(maxsize=64)
def _unknown_terms(declared: tuple) -> tuple:
    """The terms pydicom does not know (it fixes "ISO-IR 192", not a list of ours); asked once
    per Specific Character Set, not for every file and attribute of a series."""
    ensure_pydicom()
    from pydicom.charset import convert_encodings, default_encoding, python_encoding
    unknown = []
    for t in declared:
        try:
            bad = t not in python_encoding and convert_encodings([t]) == [default_encoding]
        except LookupError:
            bad = True
        if bad:
            unknown.append(t)
    return tuple(unknown)


def _note_charset(rec: InstanceRecord, terms: list[str]) -> None:
    """One note per reason naming the text attributes that may be wrong (CHARSET_DOUBT)."""
    why: dict[str, list[str]] = {}
    for kw, v in rec.tags.items():
        if _KW_VR.get(kw) not in _TEXT_VRS:
            continue
        text = "\\".join(map(str, v)) if isinstance(v, list) else str(v or "")
        reason = None if text.isascii() else _charset_doubt(terms, text)
        if reason:
            why.setdefault(reason, []).append(kw)
    for reason, kws in why.items():
        rec.notes.append(f"{', '.join(kws)}: {reason}: {CHARSET_DOUBT}")


def charset_doubt(rec, keyword: str = "PatientName") -> str | None:
    """The record's note saying ``keyword``'s text may be wrong (its character set), or None."""
    for n in getattr(rec, "notes", None) or ():
        if n.endswith(CHARSET_DOUBT) and keyword in n.partition(": ")[0].split(", "):
            return n
    return None


def _walk(buf, pos: int, end: int, explicit: bool, rec: InstanceRecord | None,
          raw_out: dict | None, top: bool) -> int:
    """Walk elements from pos to end (or to an item delimiter); return the new position.

    At top level the wanted values go to raw_out and the pixel data is noted in rec.
    """
    unpack = struct.unpack_from
    n = len(buf)
    while pos < end:
        if pos + 8 > n:
            raise _Truncated("truncated element header")
        group, elem = unpack("<HH", buf, pos)
        tag = (group << 16) | elem
        if tag == _ITEM_END or tag == _SEQ_END:
            return pos  # caller handles delimiters
        if explicit and group != 0xFFFE:
            vr = bytes(buf[pos + 4:pos + 6])
            if vr in _LONG_VRS:
                (length,) = unpack("<L", buf, pos + 8)
                hdr = 12
            elif vr.isalpha() and vr.isupper():
                (length,) = unpack("<H", buf, pos + 6)
                hdr = 8
            else:
                raise _GiveUp("bad VR")
        else:
            vr = None
            (length,) = unpack("<L", buf, pos + 4)
            hdr = 8
        vpos = pos + hdr
        if top and tag == _PIXEL_DATA:
            rec.has_pixels = True
            rec.pixel_offset = vpos
            rec.encapsulated = length == _UNDEFINED
            rec.pixel_length = None if length == _UNDEFINED else length
            return n
        if top and tag in (0x7FE00008, 0x7FE00009):
            raise _GiveUp("float pixel data")
        if length == _UNDEFINED:
            # A sequence (SQ, or UN / implicit with undefined length): walk its items.
            if vr not in (None, b"SQ", b"UN"):
                raise _GiveUp("undefined length on a non-sequence")
            if top and tag in FLAG_TAGS:
                rec.flags.add(FLAG_TAGS[tag])
            item_explicit = explicit and vr != b"UN"
            pos = _walk_sequence(buf, vpos, item_explicit)
            continue
        if vpos + length > n:
            raise _Truncated("element runs past the end of the file")
        if top:
            if tag in WANTED and raw_out is not None:
                kw, ivr = WANTED[tag]
                # UN (or a missing VR) means "look it up": use the dictionary VR.
                use = vr.decode() if vr and vr not in (b"UN", b"OB") else ivr
                raw_out[kw] = (bytes(buf[vpos:vpos + length]), use)
            elif tag in FLAG_TAGS or (group & 0xFF00) == 0x6000 and elem == 0x3000:
                rec.flags.add(FLAG_TAGS.get(tag, "OverlayData"))
        pos = vpos + length
    return pos


def _walk_sequence(buf, pos: int, explicit: bool) -> int:
    unpack = struct.unpack_from
    n = len(buf)
    while True:
        if pos + 8 > n:
            raise _Truncated("truncated sequence")
        group, elem = unpack("<HH", buf, pos)
        tag = (group << 16) | elem
        (length,) = unpack("<L", buf, pos + 4)
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _GiveUp("bad item tag")
        if length == _UNDEFINED:
            pos = _walk(buf, pos, n, explicit, None, None, top=False)
            g2, e2 = unpack("<HH", buf, pos)
            if ((g2 << 16) | e2) != _ITEM_END:
                raise _GiveUp("missing item delimiter")
            pos += 8
        else:
            pos += length


# Walking more fragment items than this is refused (a valid file has one per frame or a few).
MAX_FRAGMENTS = 1 << 20


def _walk_fragments(buf, pos: int, rec: InstanceRecord) -> None:
    """Count the items of encapsulated pixel data from pos (only their 8-byte headers).

    buf is the whole file in memory or a :class:`_Stream` over it (only the item headers
    are read then)."""
    n = len(buf)
    items, data, bot = 0, 0, None
    first = None
    rec.fragment_error = None
    while True:
        head = bytes(buf[pos:pos + 8]) if pos + 8 <= n else b""
        if len(head) < 8:
            break  # no delimiter before the end (or the file shrank): judged by the item count
        group, elem, length = struct.unpack("<HHL", head)
        tag = (group << 16) | elem
        if tag == _SEQ_END:
            break
        if tag != _ITEM or length == _UNDEFINED:
            rec.fragment_error = (f"malformed encapsulated pixel data: (%04X,%04X) where an item "
                                  f"was expected at byte {pos}" % (group, elem))
            break
        pos += 8
        if pos + length > n:
            rec.fragment_error = (f"truncated file: a pixel data fragment of {length} bytes runs "
                                  f"past the end ({n - pos} bytes left)")
            break
        if bot is None:
            bot = length
        else:
            if first is None:
                first = (pos, length)
            items += 1
            data += length
            if items > MAX_FRAGMENTS:
                rec.fragment_error = f"more than {MAX_FRAGMENTS} pixel data fragments"
                break
        pos += length
    rec.fragments = items
    rec.fragment_bytes = data
    rec.offset_table_entries = None if bot is None else bot // 4
    if bot is not None and bot % 4 and rec.fragment_error is None:
        rec.fragment_error = f"malformed Basic Offset Table of {bot} bytes (not a multiple of 4)"
    if first is not None and rec.fragment_error is None:
        try:
            rec.codestream = _codestream_info(bytes(buf[first[0]:first[0] + min(first[1], 1 << 16)]),
                                              rec.transfer_syntax)
        except Exception:  # an unparsable start is the decoder's to report
            rec.codestream = None


def first_codestream(buf, pos: int, rec: InstanceRecord) -> None:
    """rec.codestream from the first fragment after the Basic Offset Table at pos, when buf
    (a prefix of a zip member) holds its start; the fragments are not counted."""
    try:
        tag_g, tag_e, bot = struct.unpack_from("<HHL", buf, pos)
        fpos = pos + 8 + bot
        g, e, length = struct.unpack_from("<HHL", buf, fpos)
    except struct.error:
        return
    if ((tag_g << 16) | tag_e) != _ITEM or ((g << 16) | e) != _ITEM or bot == _UNDEFINED:
        return
    head = bytes(buf[fpos + 8:fpos + 8 + min(length, 1 << 16)])
    try:
        rec.codestream = _codestream_info(head, rec.transfer_syntax)
    except Exception:
        rec.codestream = None


RLE_LOSSLESS = "1.2.840.10008.1.2.5"


def _codestream_info(head: bytes, ts: str) -> dict | None:
    """Size of the first compressed frame from its own header, where the format says it:
    RLE (segment count, Part 5 G.5), JPEG / JPEG-LS (SOF, parsed by pydicom) and
    JPEG 2000 (SIZ marker: hand-read, pydicom gives no image size for it)."""
    if ts == RLE_LOSSLESS:
        if len(head) < 64:
            return None
        return {"segments": struct.unpack_from("<L", head, 0)[0]}
    if head[:4] == b"\xff\x4f\xff\x51" and len(head) >= 42:  # J2K codestream: SOC, SIZ
        xsiz, ysiz, xo, yo = struct.unpack_from(">LLLL", head, 8)
        (csiz,) = struct.unpack_from(">H", head, 40)
        return {"rows": ysiz - yo, "columns": xsiz - xo, "samples": csiz}
    if head[:2] == b"\xff\xd8":
        ensure_pydicom()
        from pydicom.pixels.utils import _get_jpg_parameters
        info = _get_jpg_parameters(head)
        if info.get("height") and info.get("width"):  # height 0: given later (DNL)
            return {"rows": info["height"], "columns": info["width"],
                    "samples": info.get("components")}
    return None


OK, NO, MORE = "ok", "no", "more"


def _fast_scan(buf, rec: InstanceRecord, partial: bool = False) -> str:
    """Walk buf; OK when the record was filled, NO when pydicom must read the file, MORE
    when buf is only a prefix of the file (partial) and the walk needs more of it."""
    if len(buf) < 144 or bytes(buf[128:132]) != b"DICM":
        return MORE if partial and len(buf) < 144 else NO
    raw: dict[str, tuple[bytes, str]] = {}
    try:
        # File meta group: always explicit VR little endian; its length is in (0002,0000).
        g, e = struct.unpack_from("<HH", buf, 132)
        if (g, e) != (0x0002, 0x0000) or bytes(buf[136:138]) != b"UL":
            return NO
        (meta_len,) = struct.unpack_from("<L", buf, 140)
        meta_end = 144 + meta_len
        pos = _walk(buf, 144, meta_end, True, rec, raw, top=True)
        if pos != meta_end:
            return NO
        ts = raw.get("TransferSyntaxUID", (b"", ""))[0].decode("latin-1").strip(" \x00")
        if not ts or ts in (EXPLICIT_BE, DEFLATED):
            return NO
        explicit = ts != IMPLICIT_LE
        _walk(buf, meta_end, len(buf), explicit, rec, raw, top=True)
    except (_Truncated, struct.error):
        _reset(rec)
        return MORE if partial else NO
    except _GiveUp:
        _reset(rec)
        return NO
    if partial and (not rec.has_pixels or rec.pixel_offset + 8 > len(buf)):
        _reset(rec)
        return MORE  # the prefix ended before the pixel data (or its first item header)

    def charsets():  # only needed (and pydicom only imported) for non-ASCII text
        if "SpecificCharacterSet" not in raw:
            return None
        ensure_pydicom()
        from pydicom.charset import convert_encodings
        cs = raw["SpecificCharacterSet"][0].decode("latin-1").rstrip(" \x00")
        return convert_encodings([c.strip() for c in cs.split("\\")] if cs else None)
    try:
        rec.tags = {kw: _decode_value(v, vr, charsets) for kw, (v, vr) in raw.items()}
    except _GiveUp:
        _reset(rec)
        return NO
    cs = raw.get("SpecificCharacterSet", (b"", ""))[0].decode("latin-1").rstrip(" \x00")
    _note_charset(rec, [c.strip() for c in cs.split("\\")])
    rec.transfer_syntax = rec.tags.get("TransferSyntaxUID", "")
    rec.fast = True
    return OK


def _reset(rec: InstanceRecord) -> None:
    rec.tags, rec.flags = {}, set()
    rec.has_pixels = rec.encapsulated = False
    rec.pixel_offset = rec.pixel_length = rec.pixel_available = None
    rec.fragments = rec.offset_table_entries = rec.fragment_bytes = rec.fragment_error = None


def _note_pixels(buf, rec: InstanceRecord, size: int, complete: bool) -> None:
    """pixel_available and (encapsulated, buf holding the whole file) the fragment items."""
    if not rec.has_pixels or rec.pixel_offset is None:
        return
    rec.pixel_available = max(0, size - rec.pixel_offset)
    if rec.encapsulated and complete:
        _walk_fragments(buf, rec.pixel_offset, rec)


# --------------------------------------------------------------------------- pydicom path
def _to_plain(value):
    """pydicom value -> JSON-able Python value (the same types the fast walk gives)."""
    ensure_pydicom()
    import pydicom
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return None
    if isinstance(value, pydicom.multival.MultiValue) or isinstance(value, list):
        vals = [_to_plain(v) for v in value]
        return vals if len(vals) != 1 else vals[0]
    if isinstance(value, pydicom.valuerep.DSfloat) or isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    return str(value).strip(" \x00")


def record_from_dataset(ds, rec: InstanceRecord) -> None:
    for kw in KEYWORDS:
        if kw in ("MediaStorageSOPClassUID", "TransferSyntaxUID"):
            meta = getattr(ds, "file_meta", None)
            v = getattr(meta, kw, None) if meta is not None else None
        else:
            try:
                v = ds.get(kw)
            except Exception as e:
                # A malformed value: keep it visible as text, so that index.check_record
                # refuses the file where the value matters (a guessed default would not show).
                rec.notes.append(f"unreadable {kw}")
                rec.tags[kw] = f"<unreadable: {_one_line(e)[:80]}>"
                continue
        if v is not None and v != "":
            try:
                rec.tags[kw] = _to_plain(v)
            except Exception as e:
                rec.tags[kw] = f"<unreadable: {_one_line(e)[:80]}>"
    cs = rec.tags.get("SpecificCharacterSet") or []
    _note_charset(rec, [str(c).strip() for c in (cs if isinstance(cs, list) else [cs])])
    for tag, name in FLAG_TAGS.items():
        if tag in ds:
            rec.flags.add(name)
    rec.transfer_syntax = rec.tags.get("TransferSyntaxUID", "") or _guess_syntax(ds, rec)
    if not isinstance(rec.transfer_syntax, str):
        rec.transfer_syntax = str(rec.transfer_syntax)


def _guess_syntax(ds, rec: InstanceRecord) -> str:
    enc = getattr(ds, "original_encoding", None)
    if not enc:
        return ""
    implicit, little = enc
    rec.notes.append("no File Meta header: transfer syntax inferred from the data set encoding")
    if implicit:
        return IMPLICIT_LE
    return EXPLICIT_LE if little else EXPLICIT_BE


# A deflated data set is refused when it inflates to more than this many times its size
# (and more than DEFLATE_MIN_BYTES), or to more than DEFLATE_MAX_BYTES: pydicom inflates the
# whole data set into memory in one call, so the bound is checked first, streaming.
DEFLATE_MAX_RATIO = 200
DEFLATE_MIN_BYTES = 8 << 20
DEFLATE_MAX_BYTES = 4 << 30


def _check_deflated(buf) -> int | None:
    """For a Part 10 file in the Deflated transfer syntax: the inflated size of the data set,
    after checking how far it inflates (HeaderError when too far); None for other files.
    Nothing inflated is kept.  buf: the file in memory or a :class:`_Stream` over it."""
    import zlib
    if len(buf) < 144:
        return None
    head = bytes(buf[:144])
    if head[128:132] != b"DICM":
        return None
    try:
        g, e = struct.unpack_from("<HH", head, 132)
        (meta_len,) = struct.unpack_from("<L", head, 140)
    except struct.error:
        return None
    meta_end = 144 + meta_len
    if (g, e) != (0x0002, 0x0000) or meta_end > len(buf) \
            or DEFLATED.encode() not in bytes(buf[132:min(meta_end, 132 + (1 << 20))]):
        return None
    compressed = len(buf) - meta_end
    limit = min(DEFLATE_MAX_BYTES, max(DEFLATE_MIN_BYTES, DEFLATE_MAX_RATIO * compressed))
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    total, pos, step = 0, meta_end, 1 << 16
    try:
        while pos < len(buf) and not d.eof:
            data = d.decompress(bytes(buf[pos:pos + step]), 1 << 20)
            pos += step
            total += len(data)
            while d.unconsumed_tail and total <= limit:
                data = d.decompress(d.unconsumed_tail, 1 << 20)
                total += len(data)
            if total > limit:
                raise HeaderError(f"deflated data set refused: it would expand more than "
                                  f"{limit // max(1, compressed)}x ({compressed} bytes -> over "
                                  f"{limit} bytes), a possible deflate bomb")
    except zlib.error as e:
        raise HeaderError(f"corrupt deflated data set: {e}") from None
    return total  # pydicom reports offsets within the inflated data set


def _pydicom_scan(fp, rec: InstanceRecord, buf=None, size: int | None = None) -> None:
    """General reader.  buf (the whole file as bytes, or a :class:`_Stream` over it) lets the
    fragments be walked and a deflated data set be measured before pydicom inflates it."""
    ensure_pydicom()
    import pydicom
    from pydicom.errors import InvalidDicomError
    inflated = _check_deflated(buf) if buf is not None else None
    deflated = inflated is not None
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=False, force=True, defer_size=256)
    except InvalidDicomError as e:
        raise HeaderError(f"not DICOM: {_one_line(e)}") from None
    except Exception as e:  # pydicom raises many types on garbage
        raise HeaderError(f"unreadable DICOM header: {type(e).__name__}: {_one_line(e)}") from None
    try:
        keys = list(ds.keys())
    except Exception as e:
        raise HeaderError(f"unreadable DICOM header: {type(e).__name__}: {_one_line(e)}") from None
    if not keys or not any(t.group > 0x0002 for t in keys):
        raise HeaderError("not DICOM: no data elements")
    # force=True parses anything; require at least one identifying attribute.
    preamble = getattr(ds, "preamble", None) is not None
    identifying = ("SOPClassUID", "SOPInstanceUID", "Rows", "PatientID", "StudyInstanceUID",
                   "SeriesInstanceUID", "Modality", "DirectoryRecordSequence")
    if not preamble and not any(k in ds for k in identifying):
        raise HeaderError("not DICOM: no identifying attributes (SOP, patient, study, series or image)")
    record_from_dataset(ds, rec)
    if 0x7FE00010 in ds:
        rec.has_pixels = True
        # The value stays deferred (not read); its size is checked before it is decoded.
        elem = ds._dict.get(0x7FE00010)  # raw element: reading .value would load all pixels
        length = getattr(elem, "length", None)
        tell = getattr(elem, "value_tell", None)
        if deflated and tell is not None:
            # in a deflated file the offset is in the inflated stream
            rec.pixel_available = max(0, inflated - tell)
        elif size is not None and tell is not None:
            rec.pixel_available = max(0, size - tell)
        if length is None or length == _UNDEFINED:
            rec.encapsulated = rec.transfer_syntax not in NATIVE_SYNTAXES
            rec.pixel_length = None
            if rec.encapsulated and buf is not None and tell is not None and not deflated:
                _walk_fragments(buf, tell, rec)
        else:
            rec.encapsulated = False
            rec.pixel_length = length
    elif "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        rec.has_pixels = True
        rec.flags.add("FloatPixelData")


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__


# --------------------------------------------------------------------------- public
# The fast walk reads the file's first HEADER_CHUNK bytes, then 4x more while it has not
# reached the Pixel Data element; a header longer than MAX_HEADER_BYTES goes to pydicom, which
# skips large values without reading them (bounded memory for any file).
HEADER_CHUNK = 64 << 10
MAX_HEADER_BYTES = 64 << 20


class _Stream:
    """``view[a:b] -> bytes`` over a file (or zip member) of known size that is not held in
    memory: ``read_at(pos, n)`` reads only what the fragment walk and the deflate check ask."""

    def __init__(self, read_at: Callable[[int, int], bytes], size: int):
        self._read_at = read_at
        self._size = size

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, s: slice) -> bytes:
        start = s.start or 0
        stop = self._size if s.stop is None else min(s.stop, self._size)
        return self._read_at(start, stop - start) if stop > start else b""


def read_record(path: str, member: str | None = None, zf: zipfile.ZipFile | None = None) -> InstanceRecord:
    """Read one file's header.  Raises :class:`HeaderError` with a one-line reason.

    Only regular files are opened: the file is opened non-blocking and checked with
    fstat before anything is read, so a named pipe, socket or device never blocks the
    scan (and a file swapped for one after the folder walk is caught too).
    """
    if member is not None:
        if zf is None:
            raise HeaderError("zip member without its archive")
        from .archive import read_member_record
        return read_member_record(zf, zf.getinfo(member), path)
    rec = InstanceRecord(path=path, member=member)
    fh = open_regular(path)
    with fh:
        fd = fh.fileno()
        # taken before reading: a file changed while it is read no longer matches at load time
        st = os.fstat(fd)
        size = st.st_size
        rec.file_size = size
        rec.file_identity = file_identity(st)
        if size == 0:
            raise HeaderError("empty file")
        # The header is read (pread), not mapped: see the module docstring (SIGBUS).  A prefix
        # that grows until the walk reaches the Pixel Data element; a file that shrinks while
        # it is read ends the prefix there (a short read, judged as the whole file).
        buf = b""
        want = min(HEADER_CHUNK, size)
        while True:
            chunk = os.pread(fd, want - len(buf), len(buf))
            buf += chunk
            complete = len(buf) >= size or not chunk
            status = _fast_scan(buf, rec, partial=not complete)
            if status == MORE and not complete and want < MAX_HEADER_BYTES:
                want = min(want * 4, size, MAX_HEADER_BYTES)
                continue
            break
        ok = status == OK
        # the rest of the file (fragment items, a deflated data set) is read where needed
        whole = buf if complete else _Stream(lambda pos, n: os.pread(fd, n, pos), size)
        if ok:
            _note_pixels(whole, rec, size, complete=True)
        else:
            _reset(rec)
            _pydicom_scan(fh, rec, buf=whole, size=size)
        if not ok and rec.has_pixels and not rec.encapsulated and rec.transfer_syntax in NATIVE_SYNTAXES:
            rec.pixel_offset = None  # pydicom path: pixels are decoded by pydicom
    return rec


STALE_FILE = "changed since it was indexed: open the folder again"


def file_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What InstanceRecord.file_identity keeps of a file's stat."""
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def open_regular(path: str, expect: tuple | None = None):
    """Open a regular file for reading ("rb"), without blocking on a pipe or device.

    ``expect``: the record's file_identity; a file that no longer has it (rewritten, replaced
    since the scan) is refused with :data:`STALE_FILE`.  One fstat does both checks."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise HeaderError(f"cannot open: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise HeaderError(f"not a regular file ({file_kind(st.st_mode)}): skipped")
        if expect is not None and file_identity(st) != tuple(expect):
            raise HeaderError(STALE_FILE)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "named pipe"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISDIR, "folder"), (stat.S_ISLNK, "symbolic link")):
        if test(mode):
            return name
    return "special file"


def read_dataset(rec: InstanceRecord, stop_before_pixels: bool = False):
    """Full pydicom Dataset for a record (read-only; used by the slow paths and the tag browser)."""
    ensure_pydicom()
    import pydicom
    import io
    if rec.member is not None:
        from .archive import read_member_bytes
        # the archive is opened here (zipfile takes the open file): a zip swapped for a pipe
        # is refused, not waited on.  A member whose size is no longer the scanned one changed.
        with open_regular(rec.path) as zfh:
            data = read_member_bytes(zfh, rec.member, rec.member_crc)
        if rec.file_size and len(data) != rec.file_size:
            raise HeaderError(STALE_FILE)
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=stop_before_pixels)
    else:
        with open_regular(rec.path, rec.file_identity) as fh:
            ds = pydicom.dcmread(fh, force=True, stop_before_pixels=stop_before_pixels)
            ds.filename = rec.path  # the handle has no name (opened by descriptor)
            if not stop_before_pixels and "PixelData" in ds:
                _ = ds.PixelData  # make sure deferred values are read while the file is open
    if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        if not hasattr(ds, "file_meta") or ds.file_meta is None:
            ds.file_meta = pydicom.dataset.FileMetaDataset()
        if rec.transfer_syntax:
            ds.file_meta.TransferSyntaxUID = rec.transfer_syntax
            # not in the file: the tag browser says so (a plain attribute, not an element)
            ds.inferred_transfer_syntax = True
    return ds


def functional_group_value(frame_item, shared_item, seq: str, attr: str):
    """Value of attr from a functional group, per-frame first, then shared."""
    for item in (frame_item, shared_item):
        if item is None:
            continue
        s = item.get(seq)
        if s:
            v = s[0].get(attr)
            if v is not None:
                return v
    return None
