"""Label-map editing for reader corrections (no Qt): brush, eraser, fill, undo/redo.

The GUI (``ui/monitor/label_editor.py``) only turns mouse events into these calls, so every
edit is tested without a screen.  Coordinates are ``(k, j, i)`` = (slice, row, column) on the
input grid, the engine's convention.  Fill is a 4-connected flood fill of the region of equal
label under the click, within one slice (``scipy.ndimage.label``; no hand-written flood).
"""

from __future__ import annotations

import numpy as np

MAX_UNDO = 50


class LabelEdit:
    def __init__(self, label_map: np.ndarray, n_labels: int):
        lm = np.asarray(label_map)
        if lm.ndim == 2:
            lm = lm[None]
        self.original = lm.copy()
        self.array = lm.astype(np.uint8 if n_labels < 256 else np.uint16, copy=True)
        self.n_labels = int(n_labels)
        self._undo: list[tuple[int, np.ndarray]] = []
        self._redo: list[tuple[int, np.ndarray]] = []
        self._stroke_k: int | None = None  # the slice of the stroke being drawn

    # one undo step = the slice as it was before the edit (slices are small; volumes are not)
    def _push(self, k: int) -> None:
        self._undo.append((k, self.array[k].copy()))
        if len(self._undo) > MAX_UNDO:
            self._undo.pop(0)
        self._redo.clear()

    def _disc(self, k: int, j: float, i: float, radius: float) -> np.ndarray:
        h, w = self.array.shape[1:]
        r = max(0.5, float(radius))
        jj, ii = np.ogrid[:h, :w]
        return (jj - j) ** 2 + (ii - i) ** 2 <= r * r

    def brush(self, k: int, j: float, i: float, radius: float, value: int, new_stroke: bool = True) -> int:
        """Paint ``value`` in a disc; returns the number of voxels changed.  A stroke (mouse
        press to release) is one undo step: pass ``new_stroke=False`` while dragging."""
        if not 0 <= value < self.n_labels:
            raise ValueError(f"label {value} is not one of 0..{self.n_labels - 1}")
        k = int(k)
        m = self._disc(k, j, i, radius)
        changed = int(np.count_nonzero(self.array[k][m] != value))
        # an undo step holds one slice: a drag that reaches another slice starts a new step there
        # (else its paint on that slice could not be undone)
        if new_stroke or k != self._stroke_k:
            self._push(k)
        self._stroke_k = k
        self.array[k][m] = value
        return changed

    def erase(self, k: int, j: float, i: float, radius: float, new_stroke: bool = True) -> int:
        return self.brush(k, j, i, radius, 0, new_stroke)

    def fill(self, k: int, j: int, i: int, value: int) -> int:
        """Flood-fill the 4-connected region of the clicked label with ``value``."""
        from scipy import ndimage

        if not 0 <= value < self.n_labels:
            raise ValueError(f"label {value} is not one of 0..{self.n_labels - 1}")
        k, j, i = int(k), int(j), int(i)
        sl = self.array[k]
        if not (0 <= j < sl.shape[0] and 0 <= i < sl.shape[1]):
            return 0
        old = sl[j, i]
        if old == value:
            return 0
        lab, _ = ndimage.label(sl == old)  # 4-connectivity (the default structure)
        region = lab == lab[j, i]
        self._push(k)
        self._stroke_k = None
        sl[region] = value
        return int(region.sum())

    def end_stroke(self) -> None:
        """The current drag is over (mouse release, slice change): the next paint is a new step."""
        self._stroke_k = None

    def undo(self) -> bool:
        self._stroke_k = None
        if not self._undo:
            return False
        k, prev = self._undo.pop()
        self._redo.append((k, self.array[k].copy()))
        self.array[k] = prev
        return True

    def redo(self) -> bool:
        self._stroke_k = None
        if not self._redo:
            return False
        k, nxt = self._redo.pop()
        self._undo.append((k, self.array[k].copy()))
        self.array[k] = nxt
        return True

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def changed(self) -> int:
        return int(np.count_nonzero(self.array != self.original))
