"""Spreading a short list of GIL-releasing jobs (tile decodes, tile copies) over threads.

Written here rather than using ``ThreadPoolExecutor.map``: ``map`` hands each item to a pool
thread on its own (a future, a queue hand-off and a GIL round trip per stored tile) while the
calling thread waits.  For a batch of 256 px JPEG tiles those hand-offs cost about a quarter
of the decoding time.  Dealing the items out in one group per thread, the caller taking the
first group, made our reading 1.46x -> 1.56-1.65x a naive read loop (A/B in one process,
docs/slide_speed.md, round 3).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

#: threads working on one list: the caller and (GROUPS - 1) pool threads
GROUPS = max(2, min(4, os.cpu_count() or 2))


def map_grouped(fn: Callable, items: Sequence, pool: ThreadPoolExecutor, groups: int = GROUPS) -> list:
    """``[fn(x) for x in items]`` in that order, the items dealt out round-robin in ``groups``
    groups: the calling thread runs the first, ``pool`` the others (one task each).  The
    first error is raised once every group has finished, so no job outlives the call.

    ``pool`` must not be one whose threads call :func:`map_grouped` on the same pool (a
    waiting pool thread could then wait for a task queued behind it)."""
    items = list(items)
    n = max(1, min(groups, len(items)))
    if n == 1:
        return [fn(x) for x in items]
    parts = [items[i::n] for i in range(n)]
    futures = [pool.submit(lambda part: [fn(x) for x in part], p) for p in parts[1:]]
    results: list[list] = [[] for _ in range(n)]
    err = None
    try:
        results[0] = [fn(x) for x in parts[0]]
    except BaseException as e:  # noqa: BLE001 - raised below, once the other groups are done
        err = e
    for i, f in enumerate(futures, 1):
        try:
            results[i] = f.result()
        except BaseException as e:  # noqa: BLE001
            err = err or e
    if err is not None:
        raise err
    out = [None] * len(items)
    for i, r in enumerate(results):
        out[i::n] = r
    return out
