"""Type checks for values read from JSON and other user files (cards, settings, metadata).

One definition instead of one per reader.  Python's ``json`` gives ``True`` for ``true`` (a
``bool`` is an ``int``), ``nan``/``inf`` for ``NaN``/``Infinity``, and arbitrarily large ints
(``10**400``, for which ``float()`` and ``math.isfinite`` raise ``OverflowError``); comparing
with float bounds handles all three without raising."""

from __future__ import annotations

import math


def is_number(v, lo: float = -math.inf, hi: float = math.inf) -> bool:
    """A finite int or float (not a bool), within ``lo``..``hi``."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and -1e308 < v < 1e308 and lo <= v <= hi


def is_whole(v, lo: float = -math.inf, hi: float = math.inf) -> bool:
    """An int (not a bool), or a float with an integer value, within ``lo``..``hi``."""
    return is_number(v, lo, hi) and float(v).is_integer()
