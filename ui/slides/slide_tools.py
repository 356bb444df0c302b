"""Slide tools: ruler in µm, rectangle and polygon with area in mm², point counting per class,
and the analysis region; annotations kept as QuPath-style GeoJSON in the user data folder per
slide (:mod:`imaging_assist.slides.annotations`) and reloaded when the slide reopens.

:class:`SlideTools` holds the annotations of the open slide and gets the view's mouse first
(``SlideView.tools``) while a drawing tool is on; :class:`AnnotationsPanel` lists them with
their measurements and the point counts.  Coordinates are level-0 pixels throughout.

Mouse: ruler and rectangle: press, drag, release.  Polygon: click the vertices, double-click
(or Enter) closes it, Esc drops it, Backspace removes the last vertex.  Points: each click
adds a point of the current class.  The middle button still pans; Del removes the selected
annotation.
"""

from __future__ import annotations

import logging
import os

from PySide6.QtCore import QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFontMetricsF, QPainter, QPen, QPolygonF
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPushButton,
                               QVBoxLayout, QWidget)

from imaging_assist.errors import UserError
from imaging_assist.slides.annotations import (DEFAULT_COLORS, Annotation, load_for_slide, point_counts,
                                               read_geojson, save_for_slide, write_geojson)

log = logging.getLogger(__name__)

TOOLS = ("navigate", "ruler", "rectangle", "polygon", "points")
CLASSES = list(DEFAULT_COLORS)


class SlideTools(QObject):
    """Annotations of the open slide, the drawing tools and their painting on the view."""

    changed = Signal()          # an annotation was added / removed / loaded
    toolChanged = Signal(str)
    message = Signal(str)       # one line for the status (e.g. "no MPP: lengths in pixels")

    def __init__(self, view, parent=None):
        super().__init__(parent)
        self.view = view
        view.tools = self
        self.tool = "navigate"
        self.current_class = "Region"
        self.annotations: list[Annotation] = []
        self.selected: Annotation | None = None
        self.key: str | None = None      # the slide's identity (content hash), None: not saved
        self.store_error = ""
        self.notes: list[str] = []
        self._draft: list[tuple[float, float]] = []
        self._hover: tuple[float, float] | None = None
        self._pressed = False
        self._bboxes: dict = {}  # id(annotation) -> (vertex count, level-0 bbox, annotation)

    # ------------------------------------------------------------------ slide
    @property
    def mpp(self):
        s = self.view.slide
        return s.mpp if s is not None else None

    def set_slide(self, key: str | None) -> None:
        """The open slide's identity arrived (``key`` from :func:`slide_key`): its saved
        annotations come back.  The key comes after the first screen (it reads 8 MiB), so what
        was drawn or imported meanwhile (:meth:`clear_slide` emptied the list when the previous
        slide closed) is kept: joined to the saved ones and saved with them."""
        pending, pending_notes = self.annotations, self.notes
        self.key = key
        self.annotations, self.notes = [], []
        self._bboxes = {}
        self.store_error = ""
        if key is not None:
            try:
                self.annotations, self.notes = load_for_slide(key)
            except UserError as e:  # a damaged file: say so, keep it, start empty
                self.store_error = f"saved annotations not loaded: {e}"
                self.key = None  # never overwrite the damaged file
        for a in pending:  # counted points of a class join that class's one point annotation
            same = next((b for b in self.annotations if a.kind == "points" and b.kind == "points"
                         and b.name == a.name), None)
            if same is not None:
                same.points.extend(a.points)
                if self.selected is a:
                    self.selected = same
            else:
                self.annotations.append(a)
        self.notes += [n for n in pending_notes if n not in self.notes]
        if not any(a is self.selected for a in self.annotations):
            self.selected = None
        if pending and self.key is not None:
            self._save()
            n = len(pending)
            if not self.store_error:  # (a failed save said so itself)
                self.message.emit(f"{n} annotation{'s' if n != 1 else ''} made while the slide was opening "
                                  "added to its saved annotations.")
        self.changed.emit()
        self.view.update()

    def clear_slide(self) -> None:
        self.key = None
        self.annotations, self.selected, self._draft = [], None, []
        self._bboxes = {}
        self.changed.emit()

    def _save(self) -> None:
        if self.key is None or self.view.slide is None:
            return
        s = self.view.slide
        try:
            save_for_slide(self.key, self.annotations, self.mpp,
                           {"name": os.path.basename(os.path.normpath(s.path)),
                            "dimensions": list(s.dimensions), "identity": self.key,
                            "identity_method": "sha256 of size + first and last 4 MiB"})
            self.store_error = ""
        except (OSError, ValueError) as e:  # ValueError: UnicodeError, a text no file can hold
            # (write_geojson leaves no temporary file behind); the panel and the status say it
            why = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
            self.store_error = f"annotations not saved: {why}"
            self.message.emit(self.store_error)

    # ------------------------------------------------------------------ editing
    def set_tool(self, tool: str) -> None:
        if tool not in TOOLS:
            raise ValueError(tool)
        self._draft = []
        self.tool = tool
        self.view.setCursor(Qt.ArrowCursor if tool == "navigate" else Qt.CrossCursor)
        if tool in ("ruler", "rectangle", "polygon") and not self.mpp:
            self.message.emit("This slide has no MPP: lengths and areas are in pixels, not µm / mm².")
        self.toolChanged.emit(tool)
        self.view.update()

    def add(self, ann: Annotation) -> Annotation:
        self.annotations.append(ann)
        self.selected = ann
        self._save()
        self.changed.emit()
        self.view.update()
        return ann

    def remove(self, ann: Annotation) -> None:
        if ann in self.annotations:
            self.annotations.remove(ann)
            if self.selected is ann:
                self.selected = None
            self._save()
            self.changed.emit()
            self.view.update()

    def add_points(self, pts, name: str | None = None) -> Annotation:
        """Counted points of a class join that class's one point annotation (as QuPath)."""
        name = name or self.current_class
        for a in self.annotations:
            if a.kind == "points" and a.name == name:
                a.points.extend((float(x), float(y)) for x, y in pts)
                self.selected = a
                self._save()
                self.changed.emit()
                self.view.update()
                return a
        return self.add(Annotation("points", list(pts), name))

    def region(self) -> Annotation | None:
        """The analysis region: the selected rectangle / polygon, else the last one drawn."""
        if self.selected is not None and self.selected.kind in ("rectangle", "polygon"):
            return self.selected
        for a in reversed(self.annotations):
            if a.kind in ("rectangle", "polygon"):
                return a
        return None

    def counts(self) -> dict[str, int]:
        return point_counts(self.annotations)

    def import_geojson(self, path) -> int:
        """Add the annotations of a GeoJSON file; a note counts those entirely off the open slide
        (a file made for another slide)."""
        anns, notes = read_geojson(path, self.view.dimensions if self.view.slide is not None else None)
        for a in anns:
            self.annotations.append(a)
        self.notes = notes
        self._save()
        self.changed.emit()
        self.view.update()
        return len(anns)

    def export_geojson(self, path) -> None:
        write_geojson(path, self.annotations, self.mpp)

    # ------------------------------------------------------------------ mouse / keys
    def mouse(self, kind: str, ev) -> bool:
        """True when the tool used the event (the view does not pan)."""
        if self.tool == "navigate" or self.view.slide is None:
            return False
        if kind != "move" and ev.button() not in (Qt.LeftButton,) and kind != "release":
            return False
        x, y = self.view.screen_to_slide(ev.position())
        t = self.tool
        w0, h0 = self.view.dimensions
        if kind in ("move", "release") and self._pressed:  # a ruler / rectangle ends on the slide
            x, y = min(max(x, 0.0), float(w0)), min(max(y, 0.0), float(h0))
        if kind == "press" and not (0 <= x < w0 and 0 <= y < h0):
            self.message.emit("That click is outside the slide: nothing was added.")
            return True
        if kind == "move":
            self._hover = (x, y)
            if self._draft:
                if self._pressed and t in ("ruler", "rectangle"):
                    self._draft[1:] = [(x, y)]
                self.view.update()
            return self._pressed
        if kind == "press":
            if t in ("ruler", "rectangle"):
                self._draft = [(x, y), (x, y)]
                self._pressed = True
            elif t == "polygon":
                if not self._draft or self._draft[-1] != (x, y):
                    self._draft.append((x, y))
            elif t == "points":
                self.add_points([(x, y)])
            self.view.update()
            return True
        if kind == "release":
            if not self._pressed:
                return t != "navigate" and ev.button() == Qt.LeftButton
            self._pressed = False
            self.finish_drag((x, y))
            return True
        if kind == "double" and t == "polygon":
            self.close_polygon()
            return True
        return kind == "double"

    def finish_drag(self, end) -> Annotation | None:
        """End of a ruler / rectangle drag at level-0 ``end``."""
        if len(self._draft) < 1:
            return None
        (x0, y0), (x1, y1) = self._draft[0], end
        self._draft = []
        min_px = 3.0 / max(self.view.scale, 1e-9)  # a click is not a ruler
        if abs(x1 - x0) < min_px and abs(y1 - y0) < min_px:
            self.view.update()
            return None
        if self.tool == "ruler":
            return self.add(Annotation("ruler", [(x0, y0), (x1, y1)], self.current_class))
        xa, xb, ya, yb = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        if xb - xa < min_px or yb - ya < min_px:
            self.view.update()
            return None
        return self.add(Annotation("rectangle", [(xa, ya), (xb, ya), (xb, yb), (xa, yb)], self.current_class))

    def close_polygon(self) -> Annotation | None:
        pts = list(dict.fromkeys(self._draft))
        self._draft = []
        self.view.update()
        if len(pts) < 3:
            self.message.emit("A polygon needs at least 3 points.")
            return None
        return self.add(Annotation("polygon", pts, self.current_class))

    def wants_key(self, ev) -> bool:
        """Would :meth:`key_event` use this key now (so window shortcuts must not take it)?"""
        k = ev.key()
        if k == Qt.Key_Escape:
            return bool(self._draft) or self.tool != "navigate"
        if k in (Qt.Key_Return, Qt.Key_Enter):
            return self.tool == "polygon" and bool(self._draft)
        if k == Qt.Key_Backspace:
            return bool(self._draft)
        if k == Qt.Key_Delete:
            return self.selected is not None
        return False

    def key_event(self, ev) -> bool:
        k = ev.key()
        if k == Qt.Key_Escape and (self._draft or self.tool != "navigate"):
            if self._draft:
                self._draft = []
                self.view.update()
            else:
                self.set_tool("navigate")
            return True
        if k in (Qt.Key_Return, Qt.Key_Enter) and self.tool == "polygon" and self._draft:
            self.close_polygon()
            return True
        if k == Qt.Key_Backspace and self._draft:
            self._draft.pop()
            self.view.update()
            return True
        if k == Qt.Key_Delete and self.selected is not None:
            self.remove(self.selected)
            return True
        return False

    # ------------------------------------------------------------------ painting
    def _screen(self, pts) -> QPolygonF:
        return QPolygonF([self.view.slide_to_screen(x, y) for x, y in pts])

    def paint(self, p: QPainter) -> None:
        v = self.view
        if not v.show_overlays and not self._draft:
            return
        p.save()
        p.setRenderHint(QPainter.Antialiasing, True)
        p.setFont(v._font)
        fm = QFontMetricsF(v._font)
        mpp = self.mpp
        vx, vy, vw, vh = v.visible_rect0()
        pad = 40 / max(v.scale, 1e-9)  # labels and point discs reach past the shape
        for a in self.annotations if v.show_overlays else []:
            x0, y0, x1, y1 = self._bbox(a)
            if x1 < vx - pad or y1 < vy - pad or x0 > vx + vw + pad or y0 > vy + vh + pad:
                continue  # off screen (an imported project can hold thousands)
            col = QColor(*a.color)
            width = 3 if a is self.selected else 2
            poly = self._screen(a.points)
            if a.kind == "points":
                for q in poly:  # a white ring: visible on purple haematoxylin and pink eosin alike
                    p.setPen(QPen(QColor(0, 0, 0, 220), 4))
                    p.setBrush(Qt.NoBrush)
                    p.drawEllipse(q, 6, 6)
                    p.setPen(QPen(QColor("white"), 2))
                    p.setBrush(col)
                    p.drawEllipse(q, 6, 6)
                continue
            p.setBrush(Qt.NoBrush)
            for pen in (QPen(QColor(0, 0, 0, 170), width + 2), QPen(col, width)):
                p.setPen(pen)
                if a.kind == "ruler":
                    p.drawPolyline(poly)
                else:
                    p.drawPolygon(poly)
            text = a.describe(mpp).split(": ", 1)[1]
            anchor = poly[len(poly) - 1] if a.kind == "ruler" else QPointF(
                min(q.x() for q in poly), min(q.y() for q in poly))
            self._label(p, fm, anchor + QPointF(6, -6), text)
        if self._draft:
            pen = QPen(QColor("#ffffff"), 2, Qt.DashLine)
            p.setPen(pen)
            p.setBrush(Qt.NoBrush)
            pts = list(self._draft)
            if self.tool == "polygon" and self._hover is not None:
                pts.append(self._hover)
            poly = self._screen(pts)
            if self.tool == "rectangle" and len(pts) >= 2:
                p.drawRect(QRectF(poly[0], poly[1]).normalized())
            else:
                p.drawPolyline(poly)
            if self.tool in ("ruler", "rectangle", "polygon") and len(pts) >= 2:
                kind = {"ruler": "ruler", "rectangle": "rectangle", "polygon": "polygon"}[self.tool]
                if kind == "rectangle":
                    (x0, y0), (x1, y1) = pts[0], pts[1]
                    pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
                if kind != "polygon" or len(pts) >= 3:
                    text = Annotation(kind, pts, self.current_class).describe(mpp).split(": ", 1)[1]
                    self._label(p, fm, poly[len(poly) - 1] + QPointF(10, 14), text)
        p.restore()

    def _bbox(self, a: Annotation) -> tuple[float, float, float, float]:
        """Level-0 bounding box, cached per annotation and vertex count."""
        hit = self._bboxes.get(id(a))
        if hit is not None and hit[2] is a and hit[0] == len(a.points):
            return hit[1]
        xs = [x for x, _ in a.points]
        ys = [y for _, y in a.points]
        box = (min(xs), min(ys), max(xs), max(ys))
        self._bboxes[id(a)] = (len(a.points), box, a)
        return box

    @staticmethod
    def _label(p: QPainter, fm: QFontMetricsF, at: QPointF, text: str) -> None:
        box = QRectF(at.x(), at.y() - fm.height(), fm.horizontalAdvance(text) + 8, fm.height() + 2)
        p.fillRect(box, QColor(0, 0, 0, 170))
        p.setPen(QColor("#f0f0f0"))
        p.drawText(box, Qt.AlignCenter, text)


class AnnotationsPanel(QWidget):
    """List of the slide's annotations (class, measurement), point counts per class, the
    class for new ones, import / export of GeoJSON."""

    importRequested = Signal()
    exportRequested = Signal()

    def __init__(self, tools: SlideTools, parent=None):
        super().__init__(parent)
        self.tools = tools
        self.cls = QComboBox()
        self.cls.addItems(CLASSES)
        self.cls.setToolTip("Class of new annotations and counted points (QuPath's default classes)")
        self.cls.currentTextChanged.connect(lambda t: setattr(tools, "current_class", t))
        self.list = QListWidget()
        self.list.currentRowChanged.connect(self._select)
        self.list.itemDoubleClicked.connect(self._goto)
        self.counts = QLabel("")
        self.counts.setWordWrap(True)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        for lab in (self.counts, self.note):  # class names and notes of an imported file: never markup
            lab.setTextFormat(Qt.PlainText)
        self.note.setObjectName("SectionTitle")
        self.delete_btn = QPushButton("Delete")
        self.delete_btn.clicked.connect(self._delete)
        self.import_btn = QPushButton("Import GeoJSON…")
        self.import_btn.clicked.connect(self.importRequested)
        self.export_btn = QPushButton("Export GeoJSON…")
        self.export_btn.clicked.connect(self.exportRequested)
        top = QHBoxLayout()
        top.addWidget(QLabel("Class"))
        top.addWidget(self.cls, 1)
        row = QHBoxLayout()
        row.addWidget(self.delete_btn)
        row.addStretch(1)
        row.addWidget(self.import_btn)
        row.addWidget(self.export_btn)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 4, 6, 6)
        lay.addLayout(top)
        lay.addWidget(self.list, 1)
        lay.addWidget(self.counts)
        lay.addLayout(row)
        lay.addWidget(self.note)
        tools.changed.connect(self.refresh)
        self.refresh()

    def refresh(self):
        t = self.tools
        self.list.blockSignals(True)
        self.list.clear()
        for a in t.annotations:
            it = QListWidgetItem(a.describe(t.mpp))
            it.setForeground(QColor(*a.color))
            self.list.addItem(it)
            if a is t.selected:
                self.list.setCurrentItem(it)
        self.list.blockSignals(False)
        c = t.counts()
        self.counts.setText("Points: " + ", ".join(f"{k} {v}" for k, v in c.items()) if c else "")
        notes = []
        if t.store_error:
            notes.append("⚠ " + t.store_error)
        elif t.key is not None:
            notes.append("Saved automatically in the user data folder (GeoJSON, level-0 px), "
                         "found again by the slide's content.")
        notes += [f"⚠ {n}" for n in t.notes[:5]]
        self.note.setText("\n".join(notes))
        self.delete_btn.setEnabled(t.selected is not None)

    def _select(self, row):
        t = self.tools
        t.selected = t.annotations[row] if 0 <= row < len(t.annotations) else None
        self.delete_btn.setEnabled(t.selected is not None)
        t.view.update()

    def _goto(self, item):
        row = self.list.row(item)
        a = self.tools.annotations[row]
        xs = [x for x, _ in a.points]
        ys = [y for _, y in a.points]
        self.tools.view.center_on((min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2)

    def _delete(self):
        if self.tools.selected is not None:
            self.tools.remove(self.tools.selected)
