"""Texts for people, without Qt: one-line reasons from exceptions."""

from __future__ import annotations


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
