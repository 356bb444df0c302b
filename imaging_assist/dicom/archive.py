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
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib

from .header import (MORE, OK, HeaderError, InstanceRecord, _fast_scan, _note_pixels,
                     _one_line, _pydicom_scan, _reset, first_codestream)

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
    return [i.filename for i in infos], None


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
    rec = InstanceRecord(path=path, member=info.filename, file_size=info.file_size)
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
                # Not the common encoding: pydicom reads the whole member (bounded above).
                _reset(rec)
                buf += fh.read()
                data = bytes(buf)
                del buf
                _pydicom_scan(io.BytesIO(data), rec, buf=data, size=len(data))
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
        for name in names:
            try:
                out.append(read_member_record(zf, zf.getinfo(name), path))
            except HeaderError as e:
                out.append((f"{path}!{name}", str(e)))
            except Exception as e:  # never let one member stop the scan
                out.append((f"{path}!{name}", f"unreadable: {type(e).__name__}: {_one_line(e)}"))
    return out


def read_member_bytes(path: str, member: str) -> bytes:
    """The whole member (for loading), after the same bounds as the scan."""
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(member)
            reason = member_problem(info)
            if reason:
                raise HeaderError(reason)
            with zf.open(info) as fh:
                return fh.read(info.file_size + 1)
    except HeaderError:
        raise
    except (KeyError, *_READ_ERRORS) as e:
        raise HeaderError(f"cannot read zip member: {_one_line(e)}") from None
