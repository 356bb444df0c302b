"""Texts for people, without Qt: one-line reasons from exceptions, text shown literally."""

from __future__ import annotations

import html

# the line every window, screen and saved view carries (the status bar, reading mode, Save view)
NOT_FOR_CLINICAL_USE = "Not for clinical use"


def one_line(exc_or_text) -> str:
    """The first non-empty line of an error (no tracebacks in the window)."""
    s = str(exc_or_text).strip()
    first = next((ln.strip() for ln in s.splitlines() if ln.strip()), "")
    if not first and isinstance(exc_or_text, BaseException):
        first = type(exc_or_text).__name__
    return first[:400]


def reason_of(exc: BaseException) -> str:
    """One line saying why something could not be read or shown.  The engine's own errors
    (:class:`imaging_assist.errors.UserError`) are verdicts on the input and read as they are;
    anything else is an unexpected failure and says so with its type, so it is never taken for
    a verdict on the file."""
    from imaging_assist.errors import UserError

    if isinstance(exc, UserError):
        return one_line(exc)
    return one_line(f"unexpected error ({type(exc).__name__}): {one_line(exc)}")


def plain_tip(text) -> str:
    """``text`` for a tooltip or a message box, shown literally.  Qt renders such a text as rich
    text when it looks like markup (``Qt.mightBeRichText``), so an untrusted value (a DICOM
    header value, a file name, a model card's or a GeoJSON class's name) holding
    ``<img src=...>`` or a 1-px ``<span>`` would be drawn, not shown.  Text that cannot be taken
    for markup (no ``<`` or ``&``) is returned as it is; other text is escaped inside an explicit
    rich-text wrapper that keeps its line breaks and spaces.  Control characters and bidi
    overrides are shown escaped (``\u202e``)."""
    # control and bidi characters escaped line by line (safe_text.printable, as the corner
    # text): a U+202E in a PatientID drew the rest of the line backwards; line breaks stay
    from imaging_assist.safe_text import printable

    s = "\n".join(printable(line) for line in str(text).split("\n"))
    if "<" not in s and "&" not in s:
        return s
    return "<qt style='white-space:pre-wrap'>" + html.escape(s, quote=False) + "</qt>"
