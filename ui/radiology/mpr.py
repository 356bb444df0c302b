"""The central view area: one slice view, three linked MPR views with a crosshair, or a
1×2 / 2×2 grid of series (layouts.GridArea)."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QSplitter, QStackedLayout, QWidget

from imaging_assist.layers import Plane

from .document import ViewerDocument
from .viewer import SliceView


class ViewArea(QWidget):
    """Holds the single view, the MPR views and the grid; ``layout_mode`` is 'single', 'mpr',
    '1x2' or '2x2'."""

    activeViewChanged = Signal(object)
    layoutChanged = Signal(str)

    def __init__(self, doc: ViewerDocument, parent=None):
        super().__init__(parent)
        self.doc = doc
        self.layout_mode = "single"
        self.single = SliceView(doc, Plane.native(), self)
        self.mpr_views = [SliceView(doc, Plane.native(), self) for _ in range(3)]
        for v in self.mpr_views:
            v.mpr_mode = True
            v.slab_siblings = self.mpr_views  # each draws the others' slab bounds by its crosshair
            v.slabChanged.connect(lambda _s: [w.update() for w in self.mpr_views])
        right = QSplitter(Qt.Vertical)
        right.addWidget(self.mpr_views[1])
        right.addWidget(self.mpr_views[2])
        right.setHandleWidth(3)
        self.mpr_split = QSplitter(Qt.Horizontal)
        self.mpr_split.addWidget(self.mpr_views[0])
        self.mpr_split.addWidget(right)
        self.mpr_split.setStretchFactor(0, 3)
        self.mpr_split.setStretchFactor(1, 2)
        self.mpr_split.setHandleWidth(3)
        self._user_sized = False
        self.mpr_split.splitterMoved.connect(self._splitter_moved)
        self._right = right
        self.mpr_split.setStyleSheet("QSplitter::handle { background: #2e3035; }")
        right.setStyleSheet("QSplitter::handle { background: #2e3035; }")
        self._stack = QStackedLayout(self)
        self._stack.setContentsMargins(0, 0, 0, 0)
        self._stack.addWidget(self.single)
        self._stack.addWidget(self.mpr_split)
        from .layouts import GridArea
        self.grid = GridArea(doc, self)  # 1x2 / 2x2: one series per viewport
        self._stack.addWidget(self.grid)
        self.grid.activated.connect(self._on_activated)
        self.active = self.single
        for v in [self.single] + self.mpr_views:
            v.activated.connect(self._on_activated)
        doc.volumeChanged.connect(self._on_volume)

    def _on_volume(self):
        planes = self.doc.planes
        if len(planes) == 3:
            for v, p in zip(self.mpr_views, planes):
                v.set_plane(p)
        self.single.set_plane(planes[0])
        if self.layout_mode == "mpr" and not self.doc.mpr_available:
            self.set_layout("single")

    def _splitter_moved(self, *args):
        self._user_sized = True

    def _size_mpr(self):
        if self._user_sized:
            return
        w, h = max(1, self.width()), max(1, self.height())
        self.mpr_split.setSizes([int(w * 0.6), w - int(w * 0.6)])
        self._right.setSizes([h // 2, h - h // 2])

    def resizeEvent(self, ev):
        super().resizeEvent(ev)
        if self.layout_mode == "mpr":
            self._size_mpr()

    def views(self) -> list[SliceView]:
        if self.layout_mode in ("1x2", "2x2"):
            return self.grid.views()
        return [self.single] if self.layout_mode == "single" else list(self.mpr_views)

    def all_views(self) -> list[SliceView]:
        return [self.single] + self.mpr_views + self.grid.all_views()

    def set_layout(self, mode: str) -> str:
        if mode == "mpr" and not self.doc.mpr_available:
            mode = "single"
        from .layouts import GRIDS
        if mode in GRIDS:
            self.grid.set_shape(*GRIDS[mode])
        elif mode not in ("single", "mpr"):
            raise ValueError(f"layout {mode!r}: single, mpr, 1x2 or 2x2")
        self.layout_mode = mode
        self._stack.setCurrentIndex({"single": 0, "mpr": 1}.get(mode, 2))
        if mode == "mpr":
            self._size_mpr()
        self._on_activated(self.single if mode == "single" else
                           self.grid.cells[0].view if mode in GRIDS else self.mpr_views[0])
        for v in self.views():
            v.fit()
        self.layoutChanged.emit(mode)
        return mode

    def _on_activated(self, view):
        if view not in self.views():
            return
        changed = view is not self.active
        self.active = view
        for v in self.all_views():
            v.active = v is view
            if v.mpr_mode:
                v.update()
        if changed:
            self.activeViewChanged.emit(view)

    def set_tool(self, tool: str):
        for v in self.all_views():
            v.set_tool(tool)
