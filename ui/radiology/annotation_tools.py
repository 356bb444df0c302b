"""Polygon / freehand ROI, arrow and text tools, undo/redo and the saved annotations of a
series, for the slice view (``viewer.SliceView`` calls the small hooks below).

The model and its history are the engine's (:class:`imaging_assist.annotations.AnnotationSet`
over the document's own ``measurements`` list); the store is
:class:`imaging_assist.annotations.AnnotationStore` (user data folder, one JSON per study).
:class:`AnnotationController` ties both to one :class:`ViewerDocument`: every change goes
through it, is recorded for Ctrl+Z / Ctrl+Y and written at once, and the saved items come
back when the study is opened again.  Viewports of one window that show the same series (and
stack) share one list of measurements and one history: what is drawn, moved or deleted in
one is what the others show and what is saved."""

from __future__ import annotations

import logging
import math
import weakref

import shiboken6

from PySide6.QtCore import QObject, QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFontMetricsF, QKeySequence, QPainter, QPainterPath, QPen, QPolygonF
from PySide6.QtWidgets import QApplication, QLineEdit

from imaging_assist.annotations import AnnotationSet, AnnotationStore
from imaging_assist.measure import OPEN_KINDS, ROI_KINDS, Measurement


log = logging.getLogger(__name__)

NEW_TOOLS = ("arrow", "text", "polygon", "freehand")
OWN_KINDS = NEW_TOOLS  # drawn and hit-tested here, not by the view's ruler/ROI code
HANDLE_PX = 7
FREEHAND_STEP_PX = 3.0  # a freehand vertex every 3 screen px (enough for an outline, few points)


# ============================================================================ controller
class AnnotationController(QObject):
    """The measurements of one document: undoable changes, saving, reloading."""

    historyChanged = Signal()
    warned = Signal(str)

    store: AnnotationStore | None = None  # None: the user data folder as it is now (tests may set one)

    def __init__(self, doc):
        super().__init__(doc)
        self.doc = doc
        self.set = _new_set(doc.measurements)
        self._edits: dict[int, dict] = {}
        self._key = None
        self._settled = False  # the list holds the series' measurements (read from the file, or shared)
        _LIVE.add(self)
        self.last_saved = None
        self.warnings: list[str] = []
        doc.volumeChanged.connect(self._on_volume)
        doc.loadFinished.connect(self._recompute_all)
        doc.sliceLoaded.connect(self._on_slice)
        if doc.volume is not None:
            self._on_volume()

    # -- where the items go --------------------------------------------------------------
    @classmethod
    def the_store(cls) -> AnnotationStore:
        # one store for the window (it remembers what the window loaded and saved, so that a
        # save removes only what was deleted here, never another app window's items), per
        # folder: data_dir() follows IMAGING_ASSIST_DATA_DIR / XDG_DATA_HOME if they change
        if cls.store is not None:
            return cls.store
        here = AnnotationStore()
        return _STORES.setdefault(here.root, here)

    def study_key(self):
        """(StudyInstanceUID, series key, stack label) of the shown series, or None."""
        s, st = self.doc.series, self.doc.study
        if self.doc.volume is None or s is None:
            return None
        study_uid = getattr(st, "uid", None) or getattr(s, "study_uid", None)
        series_key = getattr(s, "key", None) or getattr(s, "uid", None)
        if not study_uid or not series_key or str(study_uid).startswith("no-study-uid"):
            return None
        return str(study_uid), str(series_key), self.doc.stack_label or ""

    def _sync(self):
        """The document replaces its list when a volume is set: follow it (a history of its
        own: a set shared with another viewport keeps that viewport's list)."""
        if self.set.items is not self.doc.measurements:
            self.set = _new_set(self.doc.measurements)

    def _sharing(self) -> list:
        """The controllers (this one first) whose documents show this set of measurements."""
        return [self] + [c for c in _live() if c is not self and c.set is self.set]

    def _peer(self, key):
        """Another viewport of this window showing the same series and stack, settled."""
        for c in _live():
            if (c is not self and c._settled and c.doc.volume is not None and c._key == key
                    and c.doc.results_store is self.doc.results_store and c.study_key() == key):
                return c
        return None

    # -- volume changes: load --------------------------------------------------------------
    def _on_volume(self):
        self.set = _new_set(self.doc.measurements)  # not reset(): the old set may be another viewport's too
        self._settled = False
        self._edits.clear()
        self._key = self.study_key()
        self.historyChanged.emit()
        # after the series loader has put back the measurements it kept in memory for this
        # series (same objects as the file holds): only an empty series is filled from the file
        QTimer.singleShot(0, self._load_saved)

    def _load_saved(self):
        key = self.study_key()
        if key is None or key != self._key:
            return
        peer = self._peer(key)
        if peer is not None:
            # the series is on screen in another viewport: its list is the series' measurements
            # (every change to it was saved; what the series loader put back here may be older)
            self.doc.measurements = peer.doc.measurements
            self.set = peer.set
            self.doc.selected = None
            self._settled = True
            self.doc.measurementsChanged.emit()
            self.doc.selectionChanged.emit()
            self.historyChanged.emit()
            return
        self._settled = True
        if self.doc.measurements:
            return
        try:
            items, warnings = self.the_store().load(*key[:2], stack=key[2], volume=self.doc.volume)
        except OSError as e:
            items, warnings = [], [f"saved annotations not read: {e}"]
        self._sync()
        for m in items:
            self.doc.measurements.append(m)
            compute(self.doc, m)
        if items:
            self.doc.measurementsChanged.emit()
        self._warn(warnings)

    def _on_slice(self, k):
        if any(m.axis == 0 and m.index == k and m.kind in ROI_KINDS for m in self.doc.measurements):
            for m in self.doc.measurements:
                if m.axis == 0 and m.index == k and m.kind in ROI_KINDS:
                    compute(self.doc, m)
            self.doc.measurementsChanged.emit()

    def _recompute_all(self):
        if self.doc.volume is None:
            return
        for m in self.doc.measurements:
            compute(self.doc, m)
        if self.doc.measurements:
            self.doc.measurementsChanged.emit()

    # -- undoable changes -----------------------------------------------------------------
    def add(self, m: Measurement) -> Measurement:
        self._sync()
        compute(self.doc, m)
        self.set.add(m)
        self.doc.select(m)
        return m

    def remove(self, m: Measurement) -> bool:
        self._sync()
        return self.set.remove(m)

    def clear(self):
        self._sync()
        self.set.clear()

    def begin_edit(self, m: Measurement):
        self._edits[id(m)] = m.state()

    def end_edit(self, m: Measurement, label: str = "") -> bool:
        before = self._edits.pop(id(m), None)
        if before is None:
            return False
        self._sync()
        compute(self.doc, m)
        return self.set.edit(m, before, label or f"move {m.kind}")

    def set_text(self, m: Measurement, text: str) -> bool:
        self._sync()
        return self.set.set_text(m, text)

    def undo(self):
        self._sync()
        self.set.undo()

    def redo(self):
        self._sync()
        self.set.redo()

    def _changed(self, m):
        """After a change to the set: every document showing it follows; saved once."""
        for c in self._sharing():
            doc = c.doc
            if m is not None and m in doc.measurements:
                compute(doc, m)
                doc.selected = m
            elif doc.selected is not None and doc.selected not in doc.measurements:
                doc.selected = None
            doc.measurementsChanged.emit()
            doc.selectionChanged.emit()
            c.historyChanged.emit()
        self.save()

    def save(self):
        key = self.study_key()
        if key is None:
            return
        try:
            path, warnings = self.the_store().save(key[0], key[1], list(self.doc.measurements), stack=key[2],
                                                   extra={"shape": list(self.doc.shape3())},
                                                   volume=self.doc.volume)
        except (OSError, ValueError) as e:
            path, warnings = None, [f"annotations not saved: {e}"]
        self.last_saved = path
        self._warn(warnings)

    def _warn(self, warnings):
        for w in warnings:
            if w in self.warnings:
                continue  # one warning, not one per change
            self.warnings.append(w)
            log.warning("%s", w)
            self.warned.emit(w)
            _banner(self.doc, w)


_LIVE: weakref.WeakSet = weakref.WeakSet()  # every controller (documents of every window)
_STORES: dict = {}  # annotations folder -> its store (AnnotationController.the_store)


def _live() -> list:
    return [c for c in list(_LIVE) if shiboken6.isValid(c)]


def _new_set(items: list) -> AnnotationSet:
    """A set whose changes reach every controller sharing it (whichever made it)."""
    s = AnnotationSet(items)
    s.on_change = lambda m: _set_changed(s, m)
    return s


def _set_changed(s: AnnotationSet, m) -> None:
    ctl = next((c for c in _live() if c.set is s), None)
    if ctl is not None:
        ctl._changed(m)


def _banner(doc, text: str):
    obj = doc
    while obj is not None:
        if hasattr(obj, "show_banner"):
            obj.show_banner(text)
            return
        obj = obj.parent()


def annotations_for(doc) -> AnnotationController:
    """The document's controller (made on first use)."""
    ctl = getattr(doc, "_annotation_controller", None)
    if ctl is None:
        ctl = AnnotationController(doc)
        doc._annotation_controller = ctl
    return ctl


def compute(doc, m: Measurement) -> dict:
    """``doc.compute_measurement`` (every kind, polygon and freehand outlines included)."""
    if doc.volume is None:
        return {}
    return doc.compute_measurement(m)


# ============================================================================ window
def _active_doc(win):
    v = win.active_view() if hasattr(win, "active_view") else None
    return v.doc if v is not None else win.doc


def delete_selected(win) -> None:
    """Del / Backspace: the selected measurement of the active viewport, as Undo / Redo act
    there; the Measurements list's (the main viewport's) while that list has the focus."""
    panel = getattr(win, "measure_panel", None)
    focus = QApplication.focusWidget()
    doc = panel.doc if panel is not None and focus is not None and panel.isAncestorOf(focus) else _active_doc(win)
    if doc.selected is not None:
        annotations_for(doc).remove(doc.selected)


def window_actions(win) -> None:
    """The main window's Undo / Redo (Ctrl+Z; Ctrl+Y and Ctrl+Shift+Z), Clear all and
    Export measurements (DICOM SR, or a presentation state) actions, on the active viewport's
    document."""
    A = win._act
    win.a_undo = A("&Undo", lambda: annotations_for(_active_doc(win)).undo(), "Ctrl+Z",
                   tip="Undo the last change to the measurements and annotations")
    win.a_redo = A("&Redo", lambda: annotations_for(_active_doc(win)).redo(), ("Ctrl+Y", "Ctrl+Shift+Z"),
                   tip="Redo")
    win.a_clear_meas = A("Clear all measurements", lambda: annotations_for(_active_doc(win)).clear())
    win.a_export_sr = A("Export &measurements (DICOM SR)…", lambda: export_sr_dialog(win))
    win.a_export_gsps = A("Export measurements as presentation state (&GSPS)…", lambda: export_sr_dialog(win, "gsps"),
                          tip="The measurements and annotations as graphics most PACS viewers draw over the image")

    def refresh():
        ctl = annotations_for(_active_doc(win))
        for a, can, label, verb in ((win.a_undo, ctl.set.can_undo, ctl.set.undo_label(), "Undo"),
                                    (win.a_redo, ctl.set.can_redo, ctl.set.redo_label(), "Redo")):
            a.setEnabled(can)
            a.setText(f"&{verb} {label}" if label else f"&{verb}")

    annotations_for(win.doc).historyChanged.connect(refresh)
    refresh()


def annotate_button(win):
    """One toolbar button for the polygon / freehand / arrow / text tools (a drop-down: the
    toolbar keeps its width, so nothing else is pushed into its overflow menu); it shows and
    checks the last one chosen."""
    from PySide6.QtWidgets import QMenu, QToolButton

    btn = QToolButton(win)
    btn.setObjectName("AnnotateToolButton")
    btn.setPopupMode(QToolButton.MenuButtonPopup)
    btn.setToolButtonStyle(Qt.ToolButtonTextOnly)
    menu = QMenu(btn)
    acts = [win.tool_actions[t] for t in ("polygon", "freehand", "arrow", "text")]
    menu.addActions(acts)
    btn.setMenu(menu)
    btn.setDefaultAction(win.tool_actions["polygon"])

    def chosen(a):
        if a in acts:
            btn.setDefaultAction(a)

    win.tool_group.triggered.connect(chosen)
    return btn


def export_sr(doc, path, kind: str = "sr", sources=(), files=()) -> tuple:
    """Write the document's measurements as a TID 1500 SR (``kind`` "sr") or a Grayscale
    Softcopy Presentation State ("gsps"): (path, warnings); raises UserError in one line when
    nothing can be written, or when ``path`` is one of the series' own files, one of ``files``
    or one of ``sources`` (refuse_input_target): the SR, which has no pixels, would replace an
    image that is read (Qt's save dialog only asks "replace?"), as the CLI refuses."""
    from imaging_assist.errors import UserError
    from imaging_assist.export.dicom_common import DicomExportError
    from imaging_assist.export.presentation_state import write_presentation_state
    from imaging_assist.export.sr_measurements import write_measurement_sr
    from imaging_assist.outputs import refuse_input_target

    if doc.volume is None or not doc.measurements:
        raise UserError("no measurements to export")
    series = getattr(doc, "series", None)
    own = {r.path for r in series.instances} if series is not None else set()
    refuse_input_target(path, [p for p in sources or () if p], "the file", own | set(files or ()))
    warnings: list[str] = []
    write = write_presentation_state if kind == "gsps" else write_measurement_sr
    try:
        return write(doc.volume, list(doc.measurements), path, warnings=warnings), warnings
    except DicomExportError as e:
        raise UserError(str(e)) from None


def _read_here(win) -> tuple[list, set]:
    """(sources, files) an export must never replace: every file the open study was read from
    (the images of all its series, its SRs) and an opened zip, DICOMDIR (and its folder) or
    single file.  An opened folder itself is no source: a new SR saved into the study folder
    joins the study (docs/annotations.md, "Your own measurements, exported and reopened")."""
    import os

    sources = [p for p in getattr(win, "root_paths", None) or [] if p and not os.path.isdir(p)]
    index = getattr(win, "index", None)
    files = {r.path for s in (index.all_series() if index is not None else ()) for r in s.instances}
    return sources, files


def export_sr_dialog(win, kind: str = "sr") -> None:
    from pathlib import Path

    from PySide6.QtWidgets import QFileDialog

    from imaging_assist.errors import UserError

    doc = _active_doc(win)
    if doc.volume is None or not doc.measurements:
        win.statusBar().showMessage("No measurements to export", 4000)
        return
    what = "presentation state (GSPS)" if kind == "gsps" else "DICOM SR"
    path, _ = QFileDialog.getSaveFileName(win, f"Export measurements ({what})",
                                          str(Path.home() / f"measurements-{kind}.dcm"), "DICOM (*.dcm)")
    if not path:
        return
    try:
        out, warnings = export_sr(doc, path, kind, *_read_here(win))
    except (UserError, OSError) as e:
        win.show_banner(f"Measurements not exported: {e}", error=True)
        return
    msg = f"Measurements written to {out} ({what})"
    win.show_banner(msg + ("  •  " + "  •  ".join(warnings) if warnings else ""))


# ============================================================================ view hooks
def _near(a: QPointF, b: QPointF, px: float = HANDLE_PX) -> bool:
    return abs(a.x() - b.x()) <= px and abs(a.y() - b.y()) <= px


def press(view, ev, uv, tool: str) -> bool:
    """Left press in the view; True when handled here."""
    pos = ev.position()
    ctl = annotations_for(view.doc)
    pend = view._pending
    if tool == "polygon":
        if pend is None or pend.kind != "polygon":
            view._pending = Measurement("polygon", [uv], view.plane.axis, view.index, closed=False)
        elif len(pend.points) >= 3 and _near(pos, view.uv_to_screen(*pend.points[0])):
            finish(view)
        else:
            pend.points.append(uv)
        view.update()
        return True
    if tool == "freehand":
        view._pending = Measurement("freehand", [uv], view.plane.axis, view.index, closed=False)
        view._drag = ("freehand", pos)
        view.update()
        return True
    if tool == "text":
        hit = view._hit_measurement(pos)
        if hit is not None and hit.kind in ("text", "arrow"):
            edit_text(view, hit)
        else:
            open_editor(view, pos, "", lambda t, uv=uv, ax=view.plane.axis, k=view.index:
                        t and ctl.add(Measurement("text", [uv], ax, k, text=t)))
        return True
    if tool == "navigate" and pend is None:
        m = view._hit_measurement(pos)
        if m is not None:
            view.doc.select(m)
            ctl.begin_edit(m)
            view._drag = ("move", m, uv, list(m.points))
            return True
    return False


def drag(view, d, pos) -> None:
    if d[0] == "move":
        _, m, uv0, pts0 = d
        u, v = view.screen_to_uv(pos)
        du, dv = u - uv0[0], v - uv0[1]
        m.points = [(a + du, b + dv) for a, b in pts0]
        compute(view.doc, m)
        view.doc.measurementsChanged.emit()
    elif d[0] == "freehand" and view._pending is not None:
        last = view.uv_to_screen(*view._pending.points[-1])
        if (pos - last).manhattanLength() >= FREEHAND_STEP_PX:
            view._pending.points.append(view.screen_to_uv(pos))
        view.update()


def release(view, d, pos) -> bool:
    """Mouse release after a drag that started here (or a handle drag); True when handled."""
    ctl = annotations_for(view.doc)
    if d[0] in ("move", "handle"):
        ctl.end_edit(d[1], "move " + d[1].kind if d[0] == "move" else f"edit {d[1].kind}")
        return d[0] == "move"
    if d[0] == "freehand":
        finish(view)
        return True
    return False


def finish(view) -> None:
    """Close the polygon / freehand outline being drawn (too small: dropped)."""
    m = view._pending
    view._pending = None
    if m is None:
        return
    if m.kind in OPEN_KINDS:
        pts = [view.uv_to_screen(u, v) for u, v in m.points]
        while len(pts) > 1 and _near(pts[-1], pts[-2], 2):  # a double-click adds its point twice
            pts.pop()
            m.points.pop()
        w = max(p.x() for p in pts) - min(p.x() for p in pts)
        h = max(p.y() for p in pts) - min(p.y() for p in pts)
        if len(m.points) < 3 or w + h < 4:
            view.update()
            return
        m.closed = True
    annotations_for(view.doc).add(m)


def double_click(view, ev) -> bool:
    pend = view._pending
    if pend is not None and pend.kind == "polygon":
        finish(view)
        return True
    if pend is None:
        m = view._hit_measurement(ev.position())
        if m is not None and m.kind in ("text", "arrow"):
            edit_text(view, m)
            return True
    return False


def key(view, ev) -> bool:
    """Ctrl+Z / Ctrl+Y / Ctrl+Shift+Z (when no window action took them), Enter closes a
    polygon, Backspace removes its last vertex."""
    ctl = annotations_for(view.doc)
    if ev.matches(QKeySequence.Undo):
        ctl.undo()
        return True
    if ev.matches(QKeySequence.Redo) or (ev.key() == Qt.Key_Y and ev.modifiers() & Qt.ControlModifier):
        ctl.redo()
        return True
    pend = view._pending
    if pend is not None and pend.kind == "polygon":
        if ev.key() in (Qt.Key_Return, Qt.Key_Enter):
            finish(view)
            return True
        if ev.key() == Qt.Key_Backspace and len(pend.points) > 1:
            pend.points.pop()
            view.update()
            return True
    return False


# -- inline text editor ------------------------------------------------------------------
def open_editor(view, pos: QPointF, text: str, done) -> QLineEdit:
    """A line edit over the view at ``pos``: Enter calls ``done(text)``, Esc / focus loss
    drops it (no modal dialog over the image)."""
    old = getattr(view, "_annotation_editor", None)
    if old is not None:
        old.deleteLater()
    ed = QLineEdit(view)
    ed.setObjectName("AnnotationEditor")
    ed.setPlaceholderText("Note, Enter to place")
    ed.setText(text)
    ed.setMinimumWidth(220)
    ed.adjustSize()
    ed.move(int(min(max(0, pos.x()), max(0, view.width() - ed.width()))),
            int(min(max(0, pos.y() - ed.height() / 2), max(0, view.height() - ed.height()))))
    state = {"done": False}

    def commit():
        if state["done"]:
            return
        state["done"] = True
        t = ed.text().strip()
        ed.setObjectName("")
        ed.hide()
        ed.deleteLater()
        view._annotation_editor = None
        view.setFocus()
        done(t)

    def cancel():
        if not state["done"]:
            state["done"] = True
            ed.setObjectName("")
            ed.hide()
            ed.deleteLater()
            view._annotation_editor = None

    ed.returnPressed.connect(commit)
    ed.editingFinished.connect(lambda: None if ed.hasFocus() else cancel())
    ed.installEventFilter(_EscFilter(ed, cancel))
    view._annotation_editor = ed
    ed.show()
    ed.setFocus()
    return ed


class _EscFilter(QObject):
    def __init__(self, parent, cancel):
        super().__init__(parent)
        self._cancel = cancel

    def eventFilter(self, obj, ev):
        if ev.type() == ev.Type.KeyPress and ev.key() == Qt.Key_Escape:
            self._cancel()
            return True
        return False


def edit_text(view, m: Measurement) -> None:
    ctl = annotations_for(view.doc)
    view.doc.select(m)
    open_editor(view, view.uv_to_screen(*m.points[0]), m.text, lambda t: ctl.set_text(m, t))


# -- painting ------------------------------------------------------------------------------
def paint_item(view, p: QPainter, m: Measurement, col: QColor, sel: bool) -> None:
    pts = [view.uv_to_screen(u, v) for u, v in m.points]
    pending = m is view._pending
    if pending and m.kind == "polygon" and view._cursor_uv is not None:
        pts.append(view.uv_to_screen(*view._cursor_uv))
    shadow, pen = QPen(QColor(0, 0, 0, 170), 3.5), QPen(col, 1.6)
    p.setBrush(Qt.NoBrush)
    if m.kind == "text":
        label_box(view, p, QPointF(pts[0].x() - 2, pts[0].y() - 8), [m.text or "…"], col, boxed=sel)
        return
    path = QPainterPath()
    if len(pts) >= 2:
        path.addPolygon(QPolygonF(pts))
        if m.kind in OPEN_KINDS and m.closed:
            path.closeSubpath()
    for pe in (shadow, pen):
        p.setPen(pe)
        p.drawPath(path)
    if m.kind == "arrow" and len(pts) >= 2:
        _arrow_head(p, pts[1], pts[0], col)
        if m.text:
            a = pts[1]
            label_box(view, p, QPointF(a.x() + (8 if a.x() >= pts[0].x() else -8), a.y() - 8), [m.text], col,
                   right_of=a.x() >= pts[0].x())
    if m.kind == "polygon" and (sel or pending):
        p.setPen(QPen(col, 1.2))
        p.setBrush(QColor(0, 0, 0, 200))
        for q in pts[:len(m.points)]:
            p.drawRect(QRectF(q.x() - 3, q.y() - 3, 6, 6))
        if pending and len(m.points) >= 3 and len(pts) > len(m.points) and _near(pts[-1], pts[0]):
            p.setBrush(Qt.NoBrush)  # a click here closes the outline: say so with a ring
            p.drawEllipse(pts[0], HANDLE_PX + 2, HANDLE_PX + 2)
    if m.kind in OPEN_KINDS and not pending and len(pts) >= 3:
        lines = m.result.get("display_text") or m.result.get("text") or []
        if lines:
            right = max(q.x() for q in pts)
            top = min(q.y() for q in pts)
            label_box(view, p, QPointF(right + 8, top), lines, col)


def _arrow_head(p: QPainter, tail: QPointF, tip: QPointF, col: QColor) -> None:
    ang = math.atan2(tip.y() - tail.y(), tip.x() - tail.x())
    size = 11.0
    pts = [tip] + [QPointF(tip.x() - size * math.cos(ang + s * 0.45), tip.y() - size * math.sin(ang + s * 0.45))
                   for s in (-1, 1)]
    p.setPen(QPen(QColor(0, 0, 0, 170), 1.5))
    p.setBrush(col)
    p.drawPolygon(QPolygonF(pts))
    p.setBrush(Qt.NoBrush)


def label_box(view, p: QPainter, anchor: QPointF, lines: list[str], col: QColor, boxed: bool = True,
              right_of: bool = True) -> QRectF:
    """The view's label box (dark backing, kept inside the view), with a border when selected
    and anchored left or right of a point; the view draws its own ruler/ROI labels inline."""
    fm = QFontMetricsF(view._font)
    p.setFont(view._font)
    tw = max(fm.horizontalAdvance(t) for t in lines) + 10
    th = fm.height() * len(lines) + 6
    x = anchor.x() if right_of else anchor.x() - tw
    x = min(max(4.0, x), view.width() - tw - 4)
    y = min(max(4.0, anchor.y()), view.height() - th - 4)
    box = QRectF(x, y, tw, th)
    p.setPen(QPen(col, 1) if boxed else Qt.NoPen)
    p.setBrush(QColor(0, 0, 0, 175))
    p.drawRoundedRect(box, 3, 3)
    p.setPen(col)
    for i, t in enumerate(lines):
        p.drawText(QPointF(x + 5, y + 3 + fm.ascent() + i * fm.height()), t)
    return box


def text_box(view, m: Measurement) -> QRectF:
    fm = QFontMetricsF(view._font)
    q = view.uv_to_screen(*m.points[0])
    return QRectF(q.x() - 2, q.y() - 8, fm.horizontalAdvance(m.text or "…") + 10, fm.height() + 6)


def hit_distance(view, m: Measurement, pos: QPointF) -> float:
    """Screen distance from ``pos`` to the item (0 inside a text box or a closed outline)."""
    if m.kind == "text":
        return 0.0 if text_box(view, m).adjusted(-3, -3, 3, 3).contains(pos) else math.inf
    pts = [view.uv_to_screen(u, v) for u, v in m.points]
    if m.kind in OPEN_KINDS and m.closed and len(pts) >= 3:
        if QPolygonF(pts).containsPoint(pos, Qt.OddEvenFill):
            return 0.0
        pts = pts + pts[:1]
    from .viewer import _seg_dist  # the view's own point-segment distance

    return min((_seg_dist(pos, a, b) for a, b in zip(pts, pts[1:])), default=math.inf)


__all__ = ["AnnotationController", "annotations_for", "compute", "press", "drag", "release", "finish",
           "double_click", "key", "paint_item", "hit_distance", "NEW_TOOLS", "OWN_KINDS", "window_actions",
           "export_sr", "delete_selected"]
