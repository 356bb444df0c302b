"""The command layer: ``imaging-assist COMMAND``, one module per command.

Arrows point down only: the commands use demo / inference / explain / slides / models /
dicom; no engine module imports this package (tests/test_layering.py).
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
