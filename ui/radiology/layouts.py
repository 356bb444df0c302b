"""Grid layouts (1×2, 2×2) of slice views, each showing its own series with its own corner
text; series are dragged in from the study browser.  Viewports whose series share a frame
of reference scroll together by patient position (mm, not index) and show reference lines
of the active view's slice.  The geometry is in :mod:`imaging_assist.viewing`.

Cell 0 always shows the window's document (the series chosen in the browser); the other
cells own a ViewerDocument each."""

from __future__ import annotations

from PySide6.QtCore import QMimeData, Qt, Signal
from PySide6.QtGui import QColor, QFontMetricsF, QPainter, QPen
from PySide6.QtWidgets import QGridLayout, QTreeWidget, QWidget

from imaging_assist import viewing

from .document import ViewerDocument
from .viewer import SliceView

SERIES_MIME = "application/x-imaging-assist-series"
GRIDS = {"1x2": (1, 2), "2x2": (2, 2)}
REF_COLOR = QColor("#f0c060")


class SeriesTree(QTreeWidget):
    """The study browser's tree: a series item can be dragged into a viewport."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setDragEnabled(True)
        self.setDragDropMode(QTreeWidget.DragOnly)

    def mimeTypes(self):
        return [SERIES_MIME]

    def mimeData(self, items):
        from .browser import SERIES_ROLE
        keys = [it.data(0, SERIES_ROLE) for it in items if it.data(0, SERIES_ROLE)]
        md = QMimeData()
        if keys:
            md.setData(SERIES_MIME, keys[0].encode("utf-8"))
        return md


class Cell(QWidget):
    """One viewport of the grid: a SliceView; accepts a series dropped from the browser."""

    seriesDropped = Signal(object, str)  # (cell, series key)

    def __init__(self, view: SliceView, number: int, parent=None):
        super().__init__(parent)
        self.view = view
        self.number = number
        self.link_note = ""   # why this viewport does (not) follow the others
        self.gap_note = ""    # followed to a position it has no slice at (a gap, or beyond its ends)
        self.manual_link = False
        self.offset_mm = 0.0  # manual link: kept distance between the positions
        self.setAcceptDrops(True)
        lay = QGridLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(view)

    @property
    def doc(self) -> ViewerDocument:
        return self.view.doc

    def dragEnterEvent(self, ev):
        if ev.mimeData().hasFormat(SERIES_MIME):
            ev.acceptProposedAction()
        else:
            ev.ignore()

    def dragMoveEvent(self, ev):
        if ev.mimeData().hasFormat(SERIES_MIME):
            ev.acceptProposedAction()
        else:
            ev.ignore()

    def dropEvent(self, ev):
        md = ev.mimeData()
        if not md.hasFormat(SERIES_MIME):
            ev.ignore()
            return
        ev.acceptProposedAction()
        self.seriesDropped.emit(self, bytes(md.data(SERIES_MIME)).decode("utf-8"))


class GridArea(QWidget):
    """Up to four viewports in a grid.  ``loader`` (set by the window) loads a series key into
    a document: ``loader(doc, key)``; ``say(text)`` shows a status line."""

    activated = Signal(object)       # a view of the grid got the focus
    seriesDropped = Signal(int, str)  # (cell number, series key)

    def __init__(self, main_doc: ViewerDocument, parent=None):
        super().__init__(parent)
        self.main_doc = main_doc
        self.shape = (1, 2)
        self.cells: list[Cell] = []
        self.active: SliceView | None = None
        self.say = lambda text: None
        self._syncing = False
        self.show_reference_lines = True
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setSpacing(2)
        self.setStyleSheet("background: #2e3035;")
        for n in range(4):
            doc = main_doc if n == 0 else ViewerDocument(self)
            view = SliceView(doc, None, title="Drag a series here from Studies")
            view.grid_cell = n
            view.extra_painters.append(self._paint_extras)
            cell = Cell(view, n)
            cell.seriesDropped.connect(lambda c, key: self.seriesDropped.emit(c.number, key))
            view.activated.connect(self._on_activated)
            doc.positionChanged.connect(lambda axis, d=doc: self._position_changed(d, axis))
            doc.volumeChanged.connect(lambda d=doc: self._volume_changed(d))
            self.cells.append(cell)
        self.set_shape(1, 2)

    # ------------------------------------------------------------------ layout
    def set_shape(self, rows: int, cols: int):
        self.shape = (rows, cols)
        for c in self.cells:
            self._grid.removeWidget(c)
            c.hide()
        for n in range(rows * cols):
            c = self.cells[n]
            self._grid.addWidget(c, n // cols, n % cols)
            c.show()
        for r in range(2):
            self._grid.setRowStretch(r, 1 if r < rows else 0)
            self._grid.setColumnStretch(r, 1 if r < cols else 0)
        if self.active is None or self.active not in self.views():
            self.active = self.cells[0].view
        self._relink()

    def visible_cells(self) -> list[Cell]:
        return self.cells[: self.shape[0] * self.shape[1]]

    def views(self) -> list[SliceView]:
        return [c.view for c in self.visible_cells()]

    def all_views(self) -> list[SliceView]:
        return [c.view for c in self.cells]

    def docs(self) -> list[ViewerDocument]:
        return [c.doc for c in self.visible_cells()]

    def empty_cells(self) -> list[Cell]:
        return [c for c in self.visible_cells() if c.doc.volume is None]

    def cell_of(self, doc) -> Cell | None:
        return next((c for c in self.cells if c.doc is doc), None)

    def _on_activated(self, view):
        if view not in self.views():
            return
        self.active = view
        for v in self.all_views():
            v.active = v is view
            v.update()
        self.activated.emit(view)

    # ------------------------------------------------------------------ linking
    def set_manual_link(self, number: int, on: bool) -> str:
        """Link viewport ``number`` to the others by hand (for different or unknown frames of
        reference): it keeps its current distance to the active series.  Returns the note."""
        cell = self.cells[number]
        cell.manual_link = bool(on)
        cell.offset_mm = 0.0
        src = self._source_for(cell)
        if on and src is not None and src.volume is not None and cell.doc.volume is not None:
            c = viewing.slice_geometry(src.volume, _native(), src.position[0]).center
            here = viewing.slice_geometry(cell.doc.volume, _native(), cell.doc.position[0]).center
            cell.offset_mm = float((here - c) @ cell.doc.volume.normal)
        self._relink()
        return cell.link_note

    def _source_for(self, cell: Cell) -> ViewerDocument | None:
        av = self.active if self.active is not None else self.cells[0].view
        src = av.doc if av.doc is not cell.doc else next(
            (c.doc for c in self.visible_cells() if c.doc is not cell.doc and c.doc.volume is not None), None)
        return src

    def _relink(self):
        """Recompute each viewport's link note (shown in the viewport) and repaint: why it does
        not scroll with the first viewport (the current series), or that it does by hand."""
        cells = self.visible_cells()
        first = cells[0].doc
        for c in cells:
            c.link_note = ""
            if c is not cells[0] and c.doc.volume is not None and first.volume is not None:
                ok, why = viewing.link_check(first.volume, c.doc.volume, manual=c.manual_link)
                if why and not ok and viewing.same_space(first.volume, c.doc.volume):
                    why += " (reference lines shown)"
                if first.volume.n_slices <= 1 and c.doc.volume.n_slices <= 1:
                    why = ""  # two single images (e.g. radiographs side by side): nothing to scroll or link
                pa, pb = first.patient, c.doc.patient
                if pa is not None and pb is not None:
                    a = viewing.identity_of([first.series], pa)
                    b = viewing.identity_of([c.doc.series], pb)
                    if str(pa.id or "") != str(pb.id or "") or viewing.other_issuer(a, b):
                        issuer = f" of {b.issuer}" if viewing.other_issuer(a, b) else ""
                        who = f"another patient (ID {pb.id or 'none'}{issuer}), not the current one"
                    else:  # the same ID under another name or birth date: a typo, or another patient
                        who = viewing.identity_note(b, a)
                    if who:
                        why = who + (f"; {why}" if why else "")
                c.link_note = why
            c.view.update()

    def linked(self, a: ViewerDocument, b: ViewerDocument) -> bool:
        if a.volume is None or b.volume is None or a is b:
            return False
        ca, cb = self.cell_of(a), self.cell_of(b)
        manual = bool((ca and ca.manual_link) or (cb and cb.manual_link))
        return viewing.link_check(a.volume, b.volume, manual=manual)[0]

    def _position_changed(self, doc: ViewerDocument, axis: int):
        if not self.isVisible() and not self.property("force_link"):
            return
        if self._syncing or doc.volume is None or axis not in (0, -1):
            self._repaint()
            return
        if doc not in self.docs():
            return
        self._syncing = True
        try:
            src_cell = self.cell_of(doc)
            if src_cell is not None:
                src_cell.gap_note = ""  # moved by the reader: at one of its own slices
            for c in self.visible_cells():
                if c.doc is doc or not self.linked(doc, c.doc):
                    continue
                k, dist = viewing.manual_linked_index(doc.volume, doc.position[0], c.doc.volume,
                                                      src_cell.offset_mm if src_cell is not None else 0.0,
                                                      c.offset_mm)
                c.gap_note = viewing.gap_note(c.doc.volume, dist)
                c.doc.set_index(0, k)
        finally:
            self._syncing = False
        self._repaint()

    def _volume_changed(self, doc):
        cell = self.cell_of(doc)
        if cell is not None:
            cell.manual_link = False
            cell.offset_mm = 0.0
            cell.gap_note = ""
        self._relink()
        # a new series joins at the position of the others
        if doc.volume is not None and doc in self.docs():
            src = next((c.doc for c in self.visible_cells() if c.doc is not doc and self.linked(c.doc, doc)), None)
            if src is not None:
                self._position_changed(src, 0)

    def _repaint(self):
        for v in self.views():
            v.update()

    # ------------------------------------------------------------------ painting
    def reference_segments(self, view: SliceView) -> list[tuple]:
        """Reference lines drawn in ``view``: where the active view's slice plane cuts this
        view's slice (display pixel coordinates, clipped to the image); only between linked
        series (same frame of reference, or linked by hand)."""
        av = self.active
        if not self.show_reference_lines or av is None or av is view or view.vol is None or av.vol is None:
            return []
        if av.doc is not view.doc:
            ca, cb = self.cell_of(av.doc), self.cell_of(view.doc)
            manual = bool((ca and ca.manual_link) or (cb and cb.manual_link))
            if not viewing.same_space(av.vol, view.vol, manual):
                return []
        seg = viewing.reference_line(av.vol, av.plane, av.index, view.vol, view.plane, view.index)
        return [seg] if seg is not None else []

    def _paint_extras(self, view: SliceView, p: QPainter):
        if view not in self.views() or view.vol is None:
            return
        for (u0, v0), (u1, v1) in self.reference_segments(view):
            a, b = view.uv_to_screen(u0, v0), view.uv_to_screen(u1, v1)
            p.setPen(QPen(QColor(0, 0, 0, 170), 3))
            p.drawLine(a, b)
            p.setPen(QPen(REF_COLOR, 1.4))
            p.drawLine(a, b)
        # the active viewport has a frame; a note says when this viewport does not follow
        cell = self.cells[view.grid_cell]
        if view is self.active and len(self.views()) > 1:
            p.setPen(QPen(QColor("#3d8bfd"), 2))
            p.setBrush(Qt.NoBrush)
            p.drawRect(view.rect().adjusted(1, 1, -1, -1))
        notes = [n for n in (cell.link_note, cell.gap_note) if n]
        if notes and view.doc.show_annotations:
            fm = QFontMetricsF(view._font)
            p.setFont(view._font)
            for i, note in enumerate(notes):
                text = fm.elidedText("⚠ " + note, Qt.ElideRight, view.width() - 16)
                y = 8 + (4 + i) * fm.height() + fm.ascent()  # under the patient / study lines
                view._draw_text(p, 8, y, text, QColor("#ffd98a"))


def _native():
    from imaging_assist.layers import Plane
    return Plane.native()

