"""Terminal progress bars (tqdm) that plug into the engine's ``progress(done, total)`` callbacks."""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def progress_bar(desc: str, unit: str = "it", enabled: bool = True):
    """Yield a ``callback(done, total)``; draws a tqdm bar on stderr when it is a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield lambda done, total: None
        return
    from tqdm import tqdm
    bar = tqdm(desc=desc, unit=unit, leave=False, file=sys.stderr)
    try:
        def cb(done: int, total: int) -> None:
            if bar.total != total:
                bar.total = total
            bar.n = done
            bar.refresh()
        yield cb
    finally:
        bar.close()
