"""Reading DICOM files inside zip archives, with bounds on what an archive can cost.

* The archive is opened once per batch of members (the central directory of a zip with
  thousands of members is parsed once, not once per member).
* Members are streamed: the header walk reads a growing prefix (64 KiB, then more) and
  stops at the Pixel Data element, so scanning never inflates the pixels.
* Sizes are bounded before anything is inflated: a member whose declared size is more
  than ``MAX_RATIO`` times its compressed size (and larger than ``RATIO_MIN_BYTES``), or
  larger than ``MAX_MEMBER_BYTES``, is refused with a one-line reason, and so is an
  archive whose members add up to more than ``MAX_TOTAL_BYTES``.  ``zipfile`` never
  returns more than a member's declared size (it stops there and checks the CRC), so
  the declared sizes bound what any later read can allocate.
* A member that is not in the common encoding (no 128-byte preamble, big endian...) is
  streamed through pydicom, which skips the pixel data; it is never held in memory whole.
* Members are addressed by name (that is what an index record keeps), so a name that
  more than one member of the archive uses is ambiguous (``zipfile`` would always give the
  last of them): those members are not read, and the archive gets one problem naming them.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from collections import Counter

from .header import (MORE, OK, STALE_FILE, HeaderError, InstanceRecord, _fast_scan, _note_pixels,
                     _one_line, _pydicom_scan, _reset, _Stream, first_codestream)

MAX_RATIO = 200  # uncompressed / compressed; deflate's own limit is ~1030
RATIO_MIN_BYTES = 8 << 20  # smaller members are never refused for their ratio (blank images)
MAX_MEMBER_BYTES = 4 << 30
MAX_TOTAL_BYTES = 64 << 30
HEADER_CHUNK = 64 << 10

_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError,
                NotImplementedError, ValueError)


def list_members(path: str) -> tuple[list[str], str | None]:
    """(member names to scan, None) or ([], one-line reason the archive is refused)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist()
                     if not i.is_dir() and not os.path.basename(i.filename).startswith(".")]
    except _READ_ERRORS as e:
        return [], f"unreadable zip: {_one_line(e)}"
    total = sum(i.file_size for i in infos)
    if total > MAX_TOTAL_BYTES:
        return [], (f"zip refused: its members would expand to {total / 1024**3:.1f} GiB "
                    f"uncompressed (limit {MAX_TOTAL_BYTES / 1024**3:.0f} GiB)")
    counts = Counter(i.filename for i in infos)
    dup = sorted(n for n, k in counts.items() if k > 1)
    reason = None
    if dup:
        reason = (f"{sum(counts[n] for n in dup)} zip members share {len(dup)} name"
                  f"{'s' if len(dup) > 1 else ''} ({', '.join(dup[:3])}{', ...' if len(dup) > 3 else ''}): "
                  "not read (which one a name means cannot be told)")
    return [i.filename for i in infos if counts[i.filename] == 1], reason


def member_info(zf: zipfile.ZipFile, name: str, counts: Counter | None = None) -> zipfile.ZipInfo:
    """The member named ``name``; HeaderError when there is none or more than one
    (``zf.getinfo`` would silently give the last).  ``counts``: the archive's name counts,
    when the caller looks up many members (counted once, not once per member)."""
    n = (counts if counts is not None else Counter(i.filename for i in zf.infolist()))[name]
    if n > 1:
        raise HeaderError(f"{n} zip members are named {name}: not read (which one is meant cannot be told)")
    try:
        return zf.getinfo(name)
    except KeyError:
        raise HeaderError(f"no zip member named {name}") from None


def member_heads(path: str, names: list[str], n: int = 8192) -> dict[str, bytes | None]:
    """The first n bytes of each named member (None: unreadable, refused or ambiguous), with
    the archive opened once (the central directory of a zip with thousands of members is
    parsed once, not once per member)."""
    out: dict[str, bytes | None] = dict.fromkeys(names)
    try:
        zf = zipfile.ZipFile(path)
    except _READ_ERRORS:
        return out
    with zf:
        counts = Counter(i.filename for i in zf.infolist())
        for name in names:
            try:
                info = member_info(zf, name, counts)
                if member_problem(info):
                    continue
                with zf.open(info) as fh:
                    out[name] = fh.read(n)
            except Exception:  # noqa: BLE001 - unreadable: it stays a problem
                continue
    return out


def member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a member is not read at all (bomb, size, encryption), or None."""
    if info.flag_bits & 0x1:
        return "encrypted zip member: not read"
    if info.file_size > MAX_MEMBER_BYTES:
        return (f"zip member refused: {info.file_size / 1024**3:.1f} GiB uncompressed "
                f"(limit {MAX_MEMBER_BYTES / 1024**3:.0f} GiB)")
    ratio = info.file_size / max(1, info.compress_size)
    if info.file_size > RATIO_MIN_BYTES and ratio > MAX_RATIO:
        return (f"zip member refused: it would expand {ratio:.0f}x ({info.compress_size} -> "
                f"{info.file_size} bytes; limit {MAX_RATIO}x), a possible zip bomb")
    return None


def read_member_record(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> InstanceRecord:
    """Header of one member, streamed.  Raises HeaderError with a one-line reason."""
    reason = member_problem(info)
    if reason:
        raise HeaderError(reason)
    rec = InstanceRecord(path=path, member=info.filename, file_size=info.file_size, member_crc=info.CRC)
    if info.file_size == 0:
        raise HeaderError("empty file")
    try:
        with zf.open(info) as fh:
            buf = bytearray()
            want = min(HEADER_CHUNK, info.file_size)
            while True:
                chunk = fh.read(want - len(buf))
                buf += chunk
                complete = len(buf) >= info.file_size or not chunk
                status = _fast_scan(buf, rec, partial=not complete)
                if status == OK:
                    _note_pixels(buf, rec, info.file_size, complete=complete)
                    if rec.encapsulated and not complete:
                        # The first frame's own header (not the rest of the pixels) is read
                        # so its size can be compared with the attributes.
                        (bot,) = struct.unpack_from("<L", buf, rec.pixel_offset + 4)
                        end = min(info.file_size, rec.pixel_offset + 16 + bot + (1 << 16),
                                  len(buf) + (16 << 20))
                        if end > len(buf):
                            buf += fh.read(end - len(buf))
                        first_codestream(buf, rec.pixel_offset, rec)
                    break
                if status == MORE and not complete:
                    want = min(want * 4, info.file_size)
                    continue
                # Not the common encoding: pydicom streams the member from its start (it
                # skips the pixel data: bounded memory, however large the member).
                _reset(rec)
                del buf

                def read_at(pos: int, n: int, fh=fh) -> bytes:
                    fh.seek(pos)
                    return fh.read(n)
                _pydicom_scan(fh, rec, buf=_Stream(read_at, info.file_size), size=info.file_size)
                break
    except HeaderError:
        raise
    except _READ_ERRORS as e:
        raise HeaderError(f"cannot read zip member: {_one_line(e)}") from None
    rec.pixel_offset = None  # not addressable on disk
    return rec


def read_members(path: str, names: list[str]) -> list[InstanceRecord | tuple[str, str]]:
    """Records (or (display path, reason)) for members of one archive, opened once."""
    out: list[InstanceRecord | tuple[str, str]] = []
    try:
        zf = zipfile.ZipFile(path)
    except _READ_ERRORS as e:
        return [(f"{path}!{n}", f"unreadable zip: {_one_line(e)}") for n in names]
    with zf:
        counts = Counter(i.filename for i in zf.infolist())
        for name in names:
            try:
                out.append(read_member_record(zf, member_info(zf, name, counts), path))
            except HeaderError as e:
                out.append((f"{path}!{name}", str(e)))
            except Exception as e:  # never let one member stop the scan
                out.append((f"{path}!{name}", f"unreadable: {type(e).__name__}: {_one_line(e)}"))
    return out


def read_member_bytes(path: str, member: str, expect_crc: int | None = None) -> bytes:
    """The whole member (for loading), after the same bounds as the scan.  ``expect_crc``: the
    CRC-32 the central directory gave at the scan; a member that no longer has it changed."""
    try:
        with zipfile.ZipFile(path) as zf:
            info = member_info(zf, member)
            reason = member_problem(info)
            if reason:
                raise HeaderError(reason)
            if expect_crc is not None and info.CRC != expect_crc:
                raise HeaderError(STALE_FILE)
            with zf.open(info) as fh:
                return fh.read(info.file_size + 1)
    except HeaderError:
        raise
    except (KeyError, *_READ_ERRORS) as e:
        raise HeaderError(f"cannot read zip member: {_one_line(e)}") from None
