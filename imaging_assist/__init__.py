"""Imaging Assist engine: DICOM and image I/O, geometry, layers, models, explanations.

No Qt is imported anywhere in this package; the desktop app (``imaging_assist_ui``)
builds on it.  NOT FOR CLINICAL USE.
"""

from __future__ import annotations

__version__ = "0.1.0"


def tool_version() -> str:
    """The installed distribution's version ("unknown" when it is not installed), as results,
    reports and DICOM objects record it.  Looked up once: ``importlib.metadata.version`` parses
    the package metadata on every call (1 ms, once per item in a batch, measured with cProfile)."""
    global _TOOL_VERSION
    if _TOOL_VERSION is None:
        try:
            from importlib.metadata import version

            _TOOL_VERSION = version("imaging-assist")
        except Exception:  # noqa: BLE001 - not installed as a distribution
            _TOOL_VERSION = "unknown"
    return _TOOL_VERSION


_TOOL_VERSION: str | None = None
