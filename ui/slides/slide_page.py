"""The slide page of the main window: toolbar, slide information (label and macro images,
levels, MPP) and the :class:`~imaging_assist_ui.slides.slide_view.SlideView`.

The main window shows it instead of the radiology view when the path it opens is a slide
(:func:`~imaging_assist_ui.slides.slide_detect.is_slide_target`); see ``MainWindow.open_slide``.  Overlay layers live in the main
window's layer stack, so the Overlays panel lists and toggles them.  Everything that reads
the file (opening, label/macro, thumbnail, tiles, tissue detection) runs off the GUI thread.

For other code (e.g. a model panel)::

    page = win.slide_page
    page.add_tile_result(res)          # heat maps + top-tile markers, placed on the slide
    page.add_tissue_mask(mask)         # a TissueMask as an outline layer
    page.add_layer(layer, downsample=(dx, dy), origin=(x0, y0))
"""

from __future__ import annotations

import html as _html
import os
import threading
import time

import numpy as np
from PySide6.QtCore import QObject, QSize, Qt, Signal
from PySide6.QtGui import QAction, QActionGroup, QImage, QKeySequence, QPixmap
from PySide6.QtWidgets import (QDockWidget, QFileDialog, QFrame, QLabel, QMessageBox, QScrollArea, QSizePolicy,
                               QSplitter, QToolBar, QVBoxLayout, QWidget)

from imaging_assist.layers import HeatmapLayer, LayerStack, Marker, MarkerLayer

from .slide_layers import slide_layer
from .slide_tiles import rgb_to_qimage
from .slide_tools import AnnotationsPanel, SlideTools
from .slide_view import SlideView
from ..shared.text import plain_tip
from ..shared.theme import MUTED, WARN_FG, text_only_toolbar
from ..shared.workers import worker_thread

INFO_WIDTH = 270
TISSUE_COLOR = (0, 215, 120)


# --------------------------------------------------------------------------- jobs
class _Job(QObject):
    """A function on a Python thread; its result / error come back as queued signals."""

    done = Signal(object)
    failed = Signal(str)
    step = Signal(object)  # intermediate results

    def __init__(self, fn, parent=None):
        super().__init__(parent)
        self._fn = fn
        self.cancelled = False
        self._thread = worker_thread(self._run_then_delete, "slide-job")

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        try:
            out = self._fn(self)
        except Exception as e:  # noqa: BLE001 - reported to the user
            msg = str(e) if getattr(e, "__module__", "").startswith("imaging_assist") else f"{type(e).__name__}: {e}"
            try:
                self.failed.emit(msg)
            except RuntimeError:
                pass
            return
        try:
            self.done.emit(out)
        except RuntimeError:
            pass

    def _run_then_delete(self):
        try:
            self._run()
        finally:
            # over: the page (its parent) would otherwise keep every job until the window closes;
            # deleteLater is safe from this thread and runs after the signals emitted in _run
            try:
                self.deleteLater()
            except RuntimeError:  # the page is already deleted, and the job with it
                pass

    def join(self, timeout=None):
        if self._thread.is_alive():
            self._thread.join(timeout)


def _scaled_pixmap(img: QImage, width: int) -> QPixmap:
    pm = QPixmap.fromImage(img)
    if pm.width() > width:
        pm = pm.scaledToWidth(width, Qt.SmoothTransformation)
    return pm


# --------------------------------------------------------------------------- page
class SlidePage(QWidget):
    """Toolbar + info panel + slide view.  ``win``: the main window (optional: tests can
    use the page alone with its own layer stack)."""

    opened = Signal(object)   # the Slide
    failed = Signal(str)
    ready = Signal(bool)      # first complete screen, thumbnail and label/macro are in (False: error)
    tissueDone = Signal(object)  # the TissueMask

    def __init__(self, win=None, layers: LayerStack | None = None, parent=None):
        super().__init__(parent)
        self.win = win
        self.layers = win.doc.layers if win is not None else (layers if layers is not None else LayerStack())
        self.slide = None
        self.path: str | None = None
        self.t_open: float | None = None
        self.associated: dict[str, QImage] = {}
        self._gen = 0
        self._open_job: _Job | None = None
        self._tissue_job: _Job | None = None
        self._io_lock = threading.Lock()  # the opener thread reads label/macro; close() waits for it
        self._ready_sent = False
        self._assoc_done = False
        self._hidden: list = []  # main-window widgets hidden while this page is shown

        self.view = SlideView(self.layers)
        self._first_view_event = threading.Event()
        self.view.firstViewComplete.connect(self._first_view)
        self.view.thumbnailReady.connect(self._check_ready)
        self.view.tileFailed.connect(self._tile_failed)
        self.tools = SlideTools(self.view, self)
        self.tools.message.connect(self._tool_message)
        self.annotations_panel = AnnotationsPanel(self.tools)
        self.annotations_panel.importRequested.connect(self.import_annotations_dialog)
        self.annotations_panel.exportRequested.connect(self.export_annotations_dialog)
        self.runs = None            # the AI panel's slide branch (slide_ai.SlideRuns), with a window
        self.annotations_dock = None
        self._saved_state = None    # the window's dock layout before the slide page was shown
        self._empty_hint = None
        self.info = self._build_info()
        self.toolbar = self._build_toolbar()
        split = QSplitter(Qt.Horizontal)
        split.addWidget(self.info_scroll)
        split.addWidget(self.view)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setSizes([INFO_WIDTH, 1200])
        split.setChildrenCollapsible(False)
        self.splitter = split
        self.banner = QLabel()
        self.banner.setObjectName("BannerError")
        self.banner.setWordWrap(True)
        self.banner.setTextFormat(Qt.PlainText)  # file names and reader errors: never markup
        self.banner.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.banner.hide()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.toolbar)
        lay.addWidget(self.banner)
        lay.addWidget(split, 1)
        if win is not None:
            self._attach(win)

    # ------------------------------------------------------------------ building
    def _action(self, text, slot, shortcut=None, tip=None, checkable=False) -> QAction:
        a = QAction(text, self)
        if shortcut:
            a.setShortcut(QKeySequence(shortcut))
            a.setShortcutContext(Qt.WidgetWithChildrenShortcut)
        a.setCheckable(checkable)
        a.setToolTip((tip or text) + (f"  ({shortcut})" if shortcut else ""))
        (a.toggled if checkable else a.triggered).connect(slot)
        self.addAction(a)
        return a

    def _build_toolbar(self) -> QToolBar:
        tb = QToolBar("Slide")
        tb.setObjectName("SlideBar")
        text_only_toolbar(tb)
        tb.setIconSize(QSize(16, 16))
        self.a_fit = self._action("Fit", lambda: self.view.fit(), tip="Whole slide in view (F)")
        self.a_one = self._action("1:1", lambda: self.view.set_level_zoom(0),
                                  tip="Full resolution: one scanned pixel per screen pixel")
        self.a_in = self._action("Zoom in", lambda: self.view.zoom_by(1.25), tip="Zoom in (+, wheel)")
        self.a_out = self._action("Zoom out", lambda: self.view.zoom_by(0.8), tip="Zoom out (-, wheel)")
        self.a_tissue = self._action("Detect tissue", self.detect_tissue,
                                     tip="Find the tissue (saturation threshold on a thumbnail) and add it "
                                         "as an overlay layer")
        self.a_heat = self._action("Load heat map…", self.load_heatmap_dialog,
                                   tip="Heat maps written by tiled analysis (.tif / .npz)")
        self.a_overview = self._action("Overview", self.view.set_overview_visible, checkable=True,
                                       tip="Show the overview (thumbnail) in the corner of the view")
        self.a_overview.setChecked(True)
        self.a_info = self._action("Slide info", self._set_info_visible, checkable=True,
                                   tip="Show the slide information panel (label, macro, levels)")
        # hidden at first: the view takes the free width (name, size and MPP are in its corner)
        self.a_info.setChecked(False)
        self.info_scroll.setVisible(False)
        self.view.show_info_text = True
        self.tool_actions = {}
        group = QActionGroup(self)
        for tool, text, tip in (("navigate", "Navigate", "Drag pans, wheel zooms (Esc)"),
                                ("ruler", "Ruler", "Distance in µm (press, drag, release)"),
                                ("rectangle", "Rectangle", "Rectangle with its area in mm²; also an analysis region"),
                                ("polygon", "Polygon", "Click the vertices, double-click or Enter closes: area in mm²; "
                                                       "also an analysis region"),
                                ("points", "Points", "Count points of the chosen class (Annotations panel)")):
            a = self._action(text, lambda on, t=tool: on and self.tools.set_tool(t), checkable=True, tip=tip)
            group.addAction(a)
            self.tool_actions[tool] = a
        self.tool_actions["navigate"].setChecked(True)
        self.tools.toolChanged.connect(lambda t: self.tool_actions[t].setChecked(True))
        for a in (self.a_fit, self.a_one, self.a_in, self.a_out):
            tb.addAction(a)
        tb.addSeparator()
        for a in self.tool_actions.values():
            tb.addAction(a)
        tb.addSeparator()
        tb.addAction(self.a_tissue)
        tb.addAction(self.a_heat)
        tb.addSeparator()
        tb.addAction(self.a_overview)
        tb.addAction(self.a_info)
        self.tissue_status = QLabel("")
        self.tissue_status.setStyleSheet(f"color: {MUTED}; padding-left: 8px;")
        self.tissue_status.setTextFormat(Qt.PlainText)  # names an imported file: never markup
        self.tissue_status.setMinimumWidth(120)  # never widens the toolbar (the view keeps its size)
        self.tissue_status.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        tb.addWidget(self.tissue_status)
        return tb

    def _build_info(self) -> QWidget:
        w = QWidget()
        lay = QVBoxLayout(w)
        lay.setContentsMargins(8, 6, 8, 8)
        lay.setSpacing(4)

        def title(text):
            t = QLabel(text)
            t.setObjectName("SectionTitle")
            return t

        self.info_text = QLabel("")
        self.info_text.setWordWrap(True)
        self.info_text.setTextFormat(Qt.RichText)
        self.info_text.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.info_text.setAlignment(Qt.AlignTop | Qt.AlignLeft)
        self.label_title = title("Label")
        self.label_img = QLabel()
        self.macro_title = title("Macro")
        self.macro_img = QLabel()
        for im in (self.label_img, self.macro_img):
            im.setAlignment(Qt.AlignLeft | Qt.AlignTop)
            im.setFrameShape(QFrame.NoFrame)
        self.assoc_note = QLabel("")
        self.assoc_note.setObjectName("SectionTitle")
        self.assoc_note.setWordWrap(True)
        lay.addWidget(title("Slide"))
        lay.addWidget(self.info_text)
        lay.addWidget(self.label_title)
        lay.addWidget(self.label_img)
        lay.addWidget(self.macro_title)
        lay.addWidget(self.macro_img)
        lay.addWidget(self.assoc_note)
        lay.addStretch(1)
        self.info_scroll = QScrollArea()
        self.info_scroll.setWidget(w)
        self.info_scroll.setWidgetResizable(True)
        self.info_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.info_scroll.setMinimumWidth(200)
        self.info_scroll.setMaximumWidth(420)
        self.info_scroll.setFrameShape(QFrame.NoFrame)
        for x in (self.label_title, self.label_img, self.macro_title, self.macro_img):
            x.hide()
        return w

    def _set_info_visible(self, on):
        self.info_scroll.setVisible(bool(on))
        self.view.show_info_text = not on  # the panel shows name, size and MPP
        self.view.update()

    # ------------------------------------------------------------------ main window
    def _attach(self, win):
        win.pages.currentChanged.connect(self._page_changed)
        dock = QDockWidget("Annotations", win)
        dock.setObjectName("SlideAnnotationsDock")
        dock.setWidget(self.annotations_panel)
        win.addDockWidget(Qt.LeftDockWidgetArea, dock)
        dock.hide()
        self.annotations_dock = dock
        if getattr(win, "model_panel", None) is not None:
            from .slide_ai import SlideRuns
            self.runs = SlideRuns(win.model_panel, self)
        win.doc.displayChanged.connect(lambda: self.view.set_show_overlays(win.doc.show_overlays))
        win.layers_panel.jumpTo.connect(self._jump_to)
        self.view.cursorInfo.connect(win.cursor_label.setText)

    def _radiology_chrome(self):
        """Main-window parts that do nothing for a slide (series browser, W/L and MPR tools,
        measurements, DICOM tags): hidden while the slide page is shown, then restored."""
        w = self.win
        return [x for x in (getattr(w, n, None) for n in ("toolbar", "browser_dock", "measure_dock", "tags_dock"))
                if x is not None]

    def _page_changed(self, _index):
        win = self.win
        if win.pages.currentWidget() is not self:
            if self.slide is not None or self._open_job is not None:
                self.close_slide()
            self._leave_layout()
            for x in self._hidden:
                x.show()
            self._hidden = []
        elif not self._hidden:
            if self._saved_state is None:  # before anything is hidden or moved
                self._saved_state = win.saveState()
            self._hidden = [x for x in self._radiology_chrome() if not x.isHidden()]
            for x in self._hidden:
                x.hide()
            self._slide_layout()
        if self.runs is not None:
            self.runs.page_changed()

    def _slide_layout(self):
        """One column of docks (AI models, Overlays, Annotations as tabs of the AI models dock,
        like QuPath's panel) so the slide view takes the rest of the width; the radiology
        layout comes back when the page is left.  The Overlays hint names slide overlays, not HU."""
        win = self.win
        if self._saved_state is None:
            self._saved_state = win.saveState()
        md = getattr(win, "model_dock", None)
        win.layers_dock.show()
        if md is not None:
            win.tabifyDockWidget(md, win.layers_dock)
            if self.annotations_dock is not None:
                win.tabifyDockWidget(md, self.annotations_dock)
        if self.annotations_dock is not None:
            self.annotations_dock.show()
        (md or win.layers_dock).raise_()
        empty = getattr(win.layers_panel, "empty", None)
        if empty is not None:
            if self._empty_hint is None:
                self._empty_hint = empty.text()
            empty.setText("No overlays. Run a slide model from AI models (heat maps per class), "
                          "Detect tissue, or Load heat map; they appear here.")

    def _leave_layout(self):
        win = self.win
        if self.annotations_dock is not None:
            self.annotations_dock.hide()
        if self._saved_state is not None:
            state, self._saved_state = self._saved_state, None
            win.restoreState(state)
            if self.annotations_dock is not None:
                self.annotations_dock.hide()
        empty = getattr(win.layers_panel, "empty", None)
        if empty is not None and self._empty_hint is not None:
            empty.setText(self._empty_hint)
            self._empty_hint = None

    def _jump_to(self, kji):
        """A marker was activated in the Overlays panel (``jumpTo`` carries only its position):
        the marker of the panel's current item (the one double-clicked), placed by its own
        layer's geometry, shown or not; else the first marker at that position, shown layers first."""
        if self.slide is None or (self.win is not None and self.win.pages.currentWidget() is not self):
            return
        from ..radiology.layers_panel import CHILD_ROLE

        layers = [l for l in self.layers.layers if isinstance(l, MarkerLayer)]
        item = self.win.layers_panel.tree.currentItem() if self.win is not None else None
        cur = item.data(0, CHILD_ROLE) if item is not None else None
        if isinstance(cur, Marker) and tuple(cur.position) == tuple(kji):
            for layer in layers:
                if any(m is cur for m in layer.markers):
                    self.view.center_on_marker(cur, layer)
                    return
        for layer in sorted(layers, key=lambda l: not l.visible):
            for m in layer.markers:
                if tuple(m.position) == tuple(kji):
                    self.view.center_on_marker(m, layer)
                    return

    def _win_state(self, ok: bool, msg: str = ""):
        win = self.win
        if win is None:
            return
        win.load_state = "done" if ok else "error"
        if not ok:
            win.last_error = msg
        win.loadFinished.emit(ok)
        win.thumbnailsDone.emit()

    # ------------------------------------------------------------------ opening
    def open(self, path: str) -> None:
        """Open ``path`` on a worker thread and show it (``opened`` / ``failed``, then ``ready``)."""
        self.close_slide()
        self._gen += 1
        gen = self._gen
        self.path = os.fspath(path)
        self.t_open = time.perf_counter()
        self._ready_sent = False
        self._assoc_done = False
        self.associated = {}
        self.banner.hide()
        self.info_text.setText(f"Opening {_html.escape(os.path.basename(self.path))}…")
        self.tissue_status.setText("")
        for x in (self.label_title, self.label_img, self.macro_title, self.macro_img):
            x.hide()
        self.assoc_note.setText("")
        if self.win is not None:
            self.win.load_state = "loading"
            self.win.last_error = ""
            self.win.setWindowTitle(f"{os.path.basename(os.path.normpath(self.path))} — Imaging Assist")
        lock = self._io_lock

        first_view = threading.Event()
        self._first_view_event = first_view

        def work(job):
            from imaging_assist.slides import open_slide
            slide = open_slide(self.path)
            job.step.emit(("slide", slide))
            first_view.wait(2.0)  # label / macro after the first screen: they would slow it down
            from imaging_assist.slides.annotations import slide_key
            try:
                job.step.emit(("key", slide_key(self.path)))
            except Exception as e:  # noqa: BLE001 - annotations then are not kept
                job.step.emit(("key", f"error: {e}"))
            with lock:
                for name in ("label", "macro"):
                    if job.cancelled or slide._closed:
                        return None
                    if name in slide.associated_image_names:
                        try:
                            job.step.emit((name, rgb_to_qimage(slide.associated_image(name))))
                        except Exception as e:  # noqa: BLE001 - one unreadable image is not fatal
                            job.step.emit((name, f"unreadable ({e})"))
            return None

        job = _Job(work, self)
        job.step.connect(lambda item, g=gen: self._open_step(g, item))
        job.done.connect(lambda _r, g=gen: self._assoc_finished(g))
        job.failed.connect(lambda msg, g=gen: self._open_failed(g, msg))
        self._open_job = job
        job.start()

    def _open_step(self, gen, item):
        kind, value = item
        if gen != self._gen:
            if kind == "slide":  # a newer open superseded this one
                with self._io_lock:
                    value.close()
            return
        if kind == "slide":
            self.slide = value
            self.view.set_slide(value, t_open=self.t_open)
            self.view.setFocus()
            self._show_info()
            self.opened.emit(value)
            if self.runs is not None:
                self.runs.page_changed()
            return
        if kind == "key":
            if value.startswith("error: "):
                self.tools.set_slide(None)
                self.tools.store_error = "annotations are not kept: " + value[len("error: "):]
                self.annotations_panel.refresh()
            else:
                self.tools.set_slide(value)
            return
        if isinstance(value, QImage):
            self.associated[kind] = value
        self._show_associated()

    def _assoc_finished(self, gen):
        if gen != self._gen:
            return
        self._open_job = None
        self._assoc_done = True
        self._show_associated()
        self._check_ready()

    def _open_failed(self, gen, msg):
        if gen != self._gen:
            return
        self._open_job = None
        self.info_text.setText("")
        self.show_banner(f"Could not open {os.path.basename(self.path or '')}: {msg}")
        self.failed.emit(msg)
        self._win_state(False, msg)
        self.ready.emit(False)

    def _first_view(self, t):
        self._first_view_event.set()
        self._check_ready()

    def _check_ready(self):
        v = self.view
        if self._ready_sent or self.slide is None or not self._assoc_done:
            return
        if v.first_complete_at is None or (v.thumb is None and not any(e.startswith("thumbnail") for e in v.errors)):
            return
        self._ready_sent = True
        win = self.win
        if win is not None and win.first_image_at is None:
            win.first_image_at = v.first_complete_at
            win.firstImageShown.emit(v.first_complete_at)
        self._win_state(True)
        self.ready.emit(True)

    def show_banner(self, text: str, error: bool = True) -> None:
        self.banner.setObjectName("BannerError" if error else "Banner")
        self.banner.style().unpolish(self.banner)
        self.banner.style().polish(self.banner)
        # ⊘ is in DejaVu Sans; ⛔ needs an emoji font (an empty box without one)
        self.banner.setText(("⊘ " if error else "⚠ ") + text)
        self.banner.show()

    def _tile_failed(self, msg):
        self.show_banner(f"Some parts of this slide cannot be read: {msg}", error=False)

    def close_slide(self) -> None:
        """Stop all reading and close the file (leaving the page does this too, and closing the
        window): a slide model run on it is cancelled (nothing added, nothing logged)."""
        self._gen += 1
        if self.runs is not None and self.runs.job is not None:
            self.runs.job.cancel()
        if self._open_job is not None:
            self._open_job.cancelled = True
            self._open_job = None
        self._first_view_event.set()
        if self._tissue_job is not None:
            self._tissue_job.cancelled = True
            self._tissue_job = None
            self.a_tissue.setEnabled(True)
        busy = self.view.close_slide()
        self.tools.clear_slide()
        if self.slide is not None:
            slide, self.slide = self.slide, None
            if busy:  # a tile read still running (slow disk): close the file when it ends
                lock = self._io_lock

                def later():
                    for t in busy:
                        t.join()
                    with lock:
                        slide.close()
                worker_thread(later, "slide-close").start()
            else:
                with self._io_lock:
                    slide.close()

    # ------------------------------------------------------------------ info panel
    def _show_info(self):
        s = self.slide
        w0, h0 = s.dimensions
        esc = _html.escape  # the file's name and what it says of itself go into rich text
        rows = [("File", esc(os.path.basename(os.path.normpath(s.path)))),
                ("Format", esc(f"{s.format} ({s.backend}{', ' + s.vendor if s.vendor else ''})")),
                ("Size", f"{w0:,} × {h0:,} px")]
        if s.mpp:
            rows.append(("Size (mm)", f"{w0 * s.mpp[0] / 1000:.2f} × {h0 * s.mpp[1] / 1000:.2f}"))
            rows.append(("MPP", f"{s.mpp[0]:.4g} × {s.mpp[1]:.4g} µm/px"))
        else:
            rows.append(("MPP", f"<span style='color:{WARN_FG}'>unknown — not in the file; "
                                "distances are shown in pixels</span>"))
        if s.objective_power:
            rows.append(("Objective", f"{s.objective_power:g}×"))
        html = "<table cellspacing=0 cellpadding=2>" + "".join(
            f"<tr><td style='color:{MUTED}; padding-right:8px'>{k}</td><td>{v}</td></tr>" for k, v in rows) + "</table>"
        lv = "".join(f"<tr><td style='color:{MUTED}'>{i}</td><td align=right>{w:,}&nbsp;×&nbsp;{h:,}</td>"
                     f"<td align=right style='padding-left:8px'>{ds:.4g}</td></tr>"
                     for i, ((w, h), ds) in enumerate(zip(s.level_dimensions, s.level_downsamples)))
        html += ("<p style='margin-top:10px; margin-bottom:2px'><b>Pyramid levels</b></p>"
                 "<table cellspacing=0 cellpadding=1>"
                 f"<tr><td style='color:{MUTED}'>level&nbsp;</td><td style='color:{MUTED}' align=right>pixels</td>"
                 f"<td style='color:{MUTED}; padding-left:8px' align=right>downsample</td></tr>{lv}</table>")
        if s.warnings:
            html += "".join(f"<p style='color:{WARN_FG}'>⚠ {esc(w)}</p>" for w in s.warnings)
        self.info_text.setText(html)

    def _show_associated(self):
        width = max(120, self.info_scroll.viewport().width() - 20)
        for name, title, img in (("label", self.label_title, self.label_img),
                                 ("macro", self.macro_title, self.macro_img)):
            q = self.associated.get(name)
            title.setVisible(q is not None)
            img.setVisible(q is not None)
            if q is not None:
                img.setPixmap(_scaled_pixmap(q, width))
                img.setToolTip(f"{name} image, {q.width()} × {q.height()} px")
        if self._assoc_done and not self.associated:
            self.assoc_note.setText("No label or macro image in this file.")
        else:
            self.assoc_note.setText("")

    # ------------------------------------------------------------------ layers
    def add_layer(self, layer, downsample=None, origin=(0.0, 0.0)):
        """Add an overlay layer on the slide (``downsample`` = level-0 px per layer px)."""
        if downsample is not None:
            slide_layer(layer, downsample, origin)
        out = self.layers.add(layer)
        if self.win is not None and not self.win.tabifiedDockWidgets(self.win.layers_dock):
            self.win.layers_dock.show()  # (a tab of the slide's dock column stays as it is)
        return out

    def add_tissue_mask(self, mask, name: str = "Tissue"):
        layer = mask.to_layer(name=name, opacity=0.9, mode="outline")
        layer.labels[1].color = TISSUE_COLOR
        return self.add_layer(layer, downsample=mask.downsample, origin=(0.0, 0.0))

    def add_heatmaps(self, heatmaps: np.ndarray, class_names, downsample, origin, top_tiles=None,
                     units: str = "probability", visible: int = 0):
        """Per-class heat maps on the tile grid (class ``visible`` shown), plus top-tile markers.

        The app's heat colours (:data:`~imaging_assist.colormaps.DEFAULT_HEAT_COLORMAP`, fading
        to transparent at the threshold): probabilities from 0 to 1, nothing drawn below
        chance (1 / number of classes, at least the app's default threshold), so H&E below
        stays H&E.  Markers are named by class and tile position."""
        from imaging_assist.colormaps import DEFAULT_HEAT_COLORMAP, DEFAULT_HEAT_THRESHOLD

        added = []
        n = len(class_names)
        thr = max(DEFAULT_HEAT_THRESHOLD, 1.0 / n) if n > 1 else DEFAULT_HEAT_THRESHOLD
        for i, name in enumerate(class_names):
            layer = HeatmapLayer(str(name), heatmaps[i], colormap=DEFAULT_HEAT_COLORMAP, vmin=0.0, vmax=1.0,
                                 threshold=thr, units=units, visible=(i == visible))
            added.append(self.add_layer(layer, downsample, origin))
        for i, (cls, tiles) in enumerate((top_tiles or {}).items()):
            ms = []
            for rank, t in enumerate(list(tiles)[:5]):
                row, col = (t.row, t.col) if hasattr(t, "row") else (t["row"], t["col"])
                score = t.score if hasattr(t, "score") else t["score"]
                ms.append(Marker((0, row, col), f"{cls} #{rank + 1} · tile r{int(row)} c{int(col)}", score=score))
            if ms:
                shown = str(cls) == str(class_names[visible]) if len(class_names) > visible else i == 0
                added.append(self.add_layer(MarkerLayer(f"Top tiles: {cls}", ms, visible=shown),
                                            downsample, origin))
        return added

    def add_tile_result(self, res):
        """A :class:`~imaging_assist.slides.TileResult`: its heat maps and top tiles; the class
        covering the most tissue is the one shown (the others are a tick away in Overlays)."""
        areas = res.areas
        vis = max(range(len(res.class_names)), key=lambda i: areas.get(res.class_names[i], 0.0)) if areas else 0
        return self.add_heatmaps(res.heatmaps, res.class_names, res.downsample, res.origin, res.top_tiles,
                                 visible=vis)

    def load_heatmap_dialog(self):
        if self.slide is None:
            return
        path, _ = QFileDialog.getOpenFileName(self, "Load heat map", os.path.dirname(self.path or ""),
                                              "Heat maps (*.tif *.tiff *.npz);;All files (*)")
        if path:
            from imaging_assist.errors import UserError
            try:
                self.load_heatmap(path)
            except UserError as e:  # the engine's line names the file and why
                QMessageBox.warning(self, "Load heat map", plain_tip(f"Not loaded: {e}"))

    def load_heatmap(self, path: str):
        """Add the heat maps of a file written by ``analyze`` (TIFF or NPZ) to the open slide.
        The engine checks the file and that it was made for this slide (UserError otherwise);
        a file that does not record its slide is placed by size, and the status bar says so."""
        from imaging_assist.slides import read_heatmaps
        from imaging_assist.slides.annotations import slide_key
        heat, meta = read_heatmaps(path, slide_dimensions=self.slide.dimensions, slide_key=slide_key(self.path))
        added = self.add_heatmaps(heat, meta["class_names"], meta["downsample"], meta["origin"],
                                  meta.get("top_tiles"))
        if meta["load_warnings"]:
            self._tool_message("; ".join(meta["load_warnings"]))
        return added

    # ------------------------------------------------------------------ annotations
    def _tool_message(self, text: str):
        self.tissue_status.setText(text)
        if self.win is not None:
            self.win.statusBar().showMessage(text, 8000)

    def import_annotations(self, path: str) -> int:
        """Add the annotations of a GeoJSON file (a QuPath export or ours); UserError on a bad file."""
        n = self.tools.import_geojson(path)
        notes = self.tools.notes
        # the first note in the status line too: that the features lie off the slide comes first
        self._tool_message(f"{n} annotation{'s' if n != 1 else ''} imported from {os.path.basename(path)}"
                           + (f": {notes[0]} ({len(notes)} note{'s' if len(notes) != 1 else ''} in "
                              "the Annotations panel)" if notes else ""))
        return n

    def import_annotations_dialog(self):
        if self.slide is None:
            return
        path, _ = QFileDialog.getOpenFileName(self, "Import annotations", os.path.dirname(self.path or ""),
                                              "GeoJSON (*.geojson *.json);;All files (*)")
        if path:
            from imaging_assist.errors import UserError
            try:
                self.import_annotations(path)
            except UserError as e:
                QMessageBox.warning(self, "Import annotations", plain_tip(e))
            except (OSError, ValueError) as e:  # ValueError: UnicodeError too; one line, never a traceback
                why = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
                QMessageBox.warning(self, "Import annotations",
                                    plain_tip(f"Could not import {os.path.basename(path)}: {why}"))

    def annotations_target(self, path: str) -> tuple[str, str | None]:
        """The file Export annotations writes for the name chosen (".geojson" added to a name
        that ends in neither .geojson nor .json, the names Import reads) and why it must not be
        written (None: it may): the name chosen or written is the slide, a file inside a slide
        folder or an MRXS slide's data folder, or one of the DICOM instances read with a DICOM
        WSI file (the GeoJSON would replace it: Qt's save dialog only asks "replace?")."""
        from imaging_assist.errors import UserError
        from imaging_assist.outputs import refuse_input_target

        chosen = path
        if not path.lower().endswith((".geojson", ".json")):
            path += ".geojson"
        src = self.path or ""
        # the slide file, and an MRXS slide's data folder (Slidedat.ini, Data*.dat); a DICOM WSI
        # folder is no source (a new file in it is fine), its instances are
        sources = [src if not os.path.isdir(src) else "",
                   os.path.splitext(src)[0] if src.lower().endswith(".mrxs") else ""]
        files: set[str] = set()
        if getattr(self.slide, "format", "") == "dicom-wsi":
            from imaging_assist.slides.dicom_backend import find_wsi_dicom_files_and_others

            folder = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
            wsm, others = find_wsi_dicom_files_and_others(folder)
            files = set(wsm) | {p for p, _ in others}
        try:
            for p in dict.fromkeys((chosen, path)):  # the slide picked by mistake: said, not renamed
                refuse_input_target(p, [s for s in sources if s], "the file", files)
        except UserError as e:
            return path, str(e)
        return path, None

    def export_annotations_dialog(self):
        if self.slide is None:
            return
        stem = os.path.splitext(os.path.basename(os.path.normpath(self.path or "slide")))[0]
        path, _ = QFileDialog.getSaveFileName(self, "Export annotations", f"{stem}.geojson",
                                              "GeoJSON (*.geojson)")
        if path:
            chosen = path
            path, why = self.annotations_target(path)
            if why is not None:
                QMessageBox.warning(self, "Export annotations", plain_tip(f"The annotations were not exported: {why}"))
                return
            if path != chosen and os.path.exists(path):
                # the dialog asked about the name typed ("notes"), not the one written ("notes.geojson")
                ans = QMessageBox.question(self, "Export annotations", plain_tip(
                    f"{os.path.basename(path)} already exists. Do you want to replace it?"))
                if ans != QMessageBox.Yes:
                    return
            try:
                self.tools.export_geojson(path)
                self._tool_message(f"{len(self.tools.annotations)} annotations written to {os.path.basename(path)}")
            except OSError as e:
                QMessageBox.warning(self, "Export annotations", plain_tip(f"Could not write {path}: {e.strerror or e}"))

    # ------------------------------------------------------------------ tissue
    def detect_tissue(self):
        """Tissue detection on a worker thread (its own file handle); adds the mask as a layer."""
        if self.slide is None or self._tissue_job is not None:
            return
        path = self.slide.path
        gen = self._gen

        def work(job):
            import warnings as _w

            from imaging_assist.slides import detect_tissue, open_slide
            t0 = time.perf_counter()
            with open_slide(path) as s, _w.catch_warnings():
                _w.simplefilter("ignore")
                mask = detect_tissue(s)
            return mask, time.perf_counter() - t0

        self.a_tissue.setEnabled(False)
        self.tissue_status.setText("Detecting tissue…")
        job = _Job(work, self)
        job.done.connect(lambda r, g=gen: self._tissue_done(g, r))
        job.failed.connect(lambda msg, g=gen: self._tissue_failed(g, msg))
        self._tissue_job = job
        job.start()

    def _tissue_done(self, gen, result):
        if gen != self._gen:
            return
        self._tissue_job = None
        self.a_tissue.setEnabled(True)
        mask, dt = result
        self.add_tissue_mask(mask)
        area = f"{mask.area_mm2:.2f} mm²" if mask.area_mm2 is not None else f"{mask.area_px:,.0f} px² (no MPP)"
        self.tissue_status.setText(f"Tissue: {mask.fraction * 100:.1f} % of the slide, {area}")
        self.tissueDone.emit(mask)

    def _tissue_failed(self, gen, msg):
        if gen != self._gen:
            return
        self._tissue_job = None
        self.a_tissue.setEnabled(True)
        self.tissue_status.setText("")
        QMessageBox.warning(self, "Tissue detection", plain_tip(f"Tissue detection failed:\n{msg}"))
