"""What a C library writes to the process's standard error while it decodes a file.

libtiff (inside Pillow) reports a damaged TIFF by printing its own line ("Fax3SetupState:
Bits/sample must be 1 for Group 3/4 encoding/decoding.") straight to file descriptor 2, from C,
before Pillow raises a bare "decoder error -2".  The user then saw two lines, the first
meaningless to them.  Python cannot install libtiff's error handler through Pillow, so the
descriptor itself is pointed at a temporary file for the duration of the decode
(:func:`captured`), and the caller puts the library's words into its own one-line error.
Whatever else was written meanwhile (another thread's output) is written to the real
standard error afterwards, so nothing is lost, only delayed.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from contextlib import contextmanager

# One redirection at a time: fd 2 belongs to the whole process.  The lock is held for the whole
# decode, so the callers capture only what libtiff decodes (:func:`by_libtiff`), and threads
# decoding PNG, JPEG or uncompressed TIFF never wait on each other here.
_LOCK = threading.Lock()


def by_libtiff(im) -> bool:
    """Whether Pillow hands this image's pixels to libtiff (a compressed TIFF), the one decoder
    here that prints; Pillow's own PNG, JPEG and uncompressed-TIFF readers report through
    their exceptions."""
    return im.format == "TIFF" and im.info.get("compression", "raw") != "raw"


class Captured:
    """The lines written to fd 2 during :func:`captured` (``lines``, filled when the block
    ends).  :meth:`take_first` removes the first for an error message; :meth:`write_back`
    writes the others to the real standard error (call it in a ``finally``)."""

    def __init__(self):
        self.lines: list[str] = []

    def take_first(self) -> str:
        return self.lines.pop(0).strip() if self.lines else ""

    def explain(self, reason: str) -> str:
        """``reason`` (the Python error, one line) with the decoder's own first line, when it
        printed one: "decoder error -2: Fax3SetupState: Bits/sample must be 1 ..."."""
        native = self.take_first()[:160]
        return f"{reason}: {native}" if native else reason

    def write_back(self) -> None:
        if self.lines:
            try:
                os.write(2, ("\n".join(self.lines) + "\n").encode("utf-8", "replace"))
            except OSError:
                pass
            self.lines = []


@contextmanager
def captured():
    """Yield a :class:`Captured`; fd 2 goes to a temporary file inside the block.  Where fd 2
    cannot be duplicated (no standard error at all), nothing is captured."""
    cap = Captured()
    with _LOCK:
        try:
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - a closed or replaced sys.stderr: nothing buffered to keep
            pass
        try:
            saved = os.dup(2)
        except OSError:
            yield cap
            return
        tmp = tempfile.TemporaryFile()
        os.dup2(tmp.fileno(), 2)
        try:
            yield cap
        finally:
            try:
                sys.stderr.flush()
            except Exception:  # noqa: BLE001
                pass
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            cap.lines = [ln for ln in tmp.read().decode("utf-8", "replace").splitlines() if ln.strip()]
            tmp.close()
