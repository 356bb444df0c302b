"""Text from files (DICOM header values, file names, CSV cells) made safe to show or export.

One definition for the command line and the engine modules that print (no imports: any
module can use it without a cycle):

* :func:`printable`: for the terminal.  A header value or file name may hold control
  characters: ESC sequences that clear lines, hide what follows, set the window title or
  make links, line breaks that start a fake line ("Patient ..."), bidi overrides that show
  text reversed.  They are shown escaped (``\\x1b``, ``\\n``, ``\\u202e``), as Python's
  ``repr`` would, and everything else as it is.
* :func:`csv_cell`: for a spreadsheet (OWASP "CSV injection"): a cell starting with
  ``= + - @``, TAB or CR is a formula to Excel / LibreOffice; it gets a leading ``'``
  (plain numbers such as ``-0.5`` stay numbers).
"""

from __future__ import annotations

import re

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# C0 and C1 controls (and DEL), bidi embeddings/overrides (U+202A-202E), isolates
# (U+2066-2069) and marks (LRM, RLM U+200E-200F, ALM U+061C), the Unicode line and paragraph
# separators, lone surrogates (undecodable bytes of a file name: they would also make print()
# raise on a UTF-8 terminal)
_ESCAPES = {c: _NAMED.get(chr(c), f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}")
            for r in ((0x00, 0x1f), (0x7f, 0x9f), (0x061c, 0x061c), (0x200e, 0x200f), (0x2028, 0x202e),
                      (0x2066, 0x2069), (0xD800, 0xDFFF))
            for c in range(r[0], r[1] + 1)}


def printable(text) -> str:
    """``text`` (any value: ``str()`` of it) with the characters a terminal would act on
    shown escaped; one line, never a control sequence."""
    s = str(text)
    return s if s.isprintable() else s.translate(_ESCAPES)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def csv_cell(value):
    """A CSV cell a spreadsheet shows as text: a string starting with ``= + - @``, TAB or CR
    gets a leading ``'`` unless it is a plain number; other values are returned as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value
