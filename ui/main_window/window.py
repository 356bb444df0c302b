"""The main window composes the workspace widgets and the components of this package, each
with one job (napari style):

* :mod:`.actions` - actions, menus, toolbar, status bar, help dialogs
* :mod:`.series_loading` - opening studies, loading series, stacks, progress, cancel, cache
* :mod:`.thumbnails` - browser thumbnails and "cannot display" tiles
* :mod:`.banner` - the warnings banner
* :mod:`.slice_bar` - slice slider and cine
* :mod:`.window_presets` - window/level presets (menu and combo)
* :mod:`.tags` - the DICOM tags dock following the slice
* :mod:`.recent` - welcome page and recent studies
* :mod:`.ai_dock` - the AI models dock
* :mod:`.overlays`, :mod:`.screenshots` - overlay dialogs, PNG export

What stays here: building the central area and docks, wiring the document's signals to the
components, view commands (layout, zoom, tools, display toggles), drag and drop, and the
public API the app and the tests use (``open_path``, ``load_state``, ``banner_text`` ...).
"""

from __future__ import annotations

import os

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtWidgets import (QDockWidget, QFileDialog, QLabel, QMainWindow, QStackedWidget, QTabWidget,
                               QVBoxLayout, QWidget)

from imaging_assist.layers import Layer

from ..radiology.browser import StudyBrowser
from ..radiology.document import ViewerDocument
from ..radiology.layers_panel import LayersPanel
from ..radiology.measure_tools import MeasurementsPanel
from ..radiology.mpr import ViewArea
from ..radiology.tag_browser import TagBrowser
from ..shared.text import NOT_FOR_CLINICAL_USE
from ..shared.theme import DOCK_MIN_WIDTH
from . import actions, ai_dock, overlays, screenshots
from .actions import CT_PRESET_KEYS, SHORTCUTS  # noqa: F401 - re-exported
from .banner import WarningsBanner
from .recent import MAX_RECENT, RecentStudies, WelcomePage  # noqa: F401 - MAX_RECENT re-exported
from .series_loading import CACHE_BYTES, SeriesLoading  # noqa: F401 - CACHE_BYTES re-exported
from .slice_bar import SliceBar
from .tags import TagsFollower
from .thumbnails import Thumbnails
from .window_presets import WindowPresets


def _loading_attr(name: str, doc: str = ""):
    """A window attribute that lives in the SeriesLoading component."""
    return property(lambda self: getattr(self.loading, name),
                    lambda self, v: setattr(self.loading, name, v), doc=doc)


class MainWindow(QMainWindow):
    loadFinished = Signal(bool)     # True when the series loaded (False: error/cancel)
    firstImageShown = Signal(float)  # perf_counter() of the first painted slice
    thumbnailsDone = Signal()

    index = _loading_attr("index", "the StudyIndex shown in the browser")
    root_paths = _loading_attr("root_paths")
    current_key = _loading_attr("current_key", "key of the series shown")
    current_stack = _loading_attr("current_stack")
    plans = _loading_attr("plans")
    load_state = _loading_attr("load_state", "idle, scanning, loading, done, error, cancelled")
    last_error = _loading_attr("last_error", "one line: why the last open/load failed")
    _cache = _loading_attr("_cache")

    def __init__(self, settings: QSettings | None = None, parent=None):
        super().__init__(parent)
        self.settings = settings if settings is not None else QSettings("ImagingAssist", "Imaging Assist")
        self.setWindowTitle("Imaging Assist")
        self.setAcceptDrops(True)
        self.setDockNestingEnabled(True)
        self.doc = ViewerDocument(self)
        self.loading = SeriesLoading(self)
        self.first_image_at: float | None = None
        self.slide_page = None  # whole-slide images: created on first use (open_slide)
        self.presets = WindowPresets(self.doc, lambda text, ms: self.statusBar().showMessage(text, ms), self)
        self.preset_combo = self.presets.combo

        self._build_central()
        self._build_docks()
        self.thumbs = Thumbnails(self.browser, self, say=lambda text: self.statusBar().showMessage(text, 8000))
        self.thumbs.done.connect(self.thumbnailsDone)
        actions.build_actions(self)
        actions.build_menus(self)
        actions.build_toolbar(self)
        actions.build_statusbar(self)
        self._connect_doc()
        ai_dock.add_ai_dock(self)
        from ..radiology.result_layers import ResultLayers
        self.results = ResultLayers(self)  # SEG / Parametric Map / SR of the shown series
        from ..radiology.nodules import NoduleTool
        self.nodules = NoduleTool(self)  # CT nodules: Shift+click or N in any plane (issue 21)
        from .reading import Reading
        self.reading = Reading(self)  # 1×2 / 2×2 layouts, priors, reading mode F11 (issue 17)
        self.presets.rebuild()
        self.resize(1600, 1000)
        # the docks' widths on a workstation screen; on a small one (1280 or 1366 px: a laptop
        # at a clinic demo) they may be narrowed down to DOCK_MIN_WIDTH, or hidden (Ctrl+B)
        self.resizeDocks([self.browser_dock, self.layers_dock], [350, 420], Qt.Horizontal)
        self._update_enabled()
        self._sync_slider()  # no series yet: no slider or cine controls

    # ================================================================== building
    def _build_central(self):
        self.view_area = ViewArea(self.doc)
        self.banner_bar = WarningsBanner()
        self.banner = self.banner_bar.label
        self.slice_bar = SliceBar(self.doc, self.view_area)
        sb = self.slice_bar
        self.play_btn, self.fps, self.slider, self.slice_label = sb.play_btn, sb.fps, sb.slider, sb.slice_label
        self.cine_timer = sb.cine_timer
        self.slider_bar = sb

        viewer_page = QWidget()
        vl = QVBoxLayout(viewer_page)
        vl.setContentsMargins(0, 0, 0, 0)
        vl.setSpacing(0)
        vl.addWidget(self.banner_bar)
        vl.addWidget(self.view_area, 1)
        vl.addWidget(sb)
        # reading mode (F11) hides the status bar and its "Not for clinical use": this line under
        # the images says it there (shown by Reading.toggle_reading_mode only)
        self.reading_note = QLabel(NOT_FOR_CLINICAL_USE)
        self.reading_note.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
        self.reading_note.setStyleSheet("color: #8b9099; padding: 1px 8px;")
        self.reading_note.hide()
        vl.addWidget(self.reading_note)

        self.welcome = WelcomePage()
        self.welcome.openFolder.connect(self.open_folder_dialog)
        self.welcome.openFile.connect(self.open_file_dialog)
        self.welcome.openPath.connect(self.open_path)
        self.recent_list, self.recent_title = self.welcome.recent_list, self.welcome.recent_title
        self.recent = RecentStudies(self.settings, self.welcome, self)
        self.recent.openPath.connect(self.open_path)
        self.pages = QStackedWidget()
        self.pages.addWidget(self.welcome)
        self.pages.addWidget(viewer_page)
        self.setCentralWidget(self.pages)
        self.view_area.activeViewChanged.connect(lambda v: self._sync_slider())
        # Invert (I) acts on the active viewport: its check mark follows that viewport's series
        self.view_area.activeViewChanged.connect(self._sync_invert)
        for d in dict.fromkeys(v.doc for v in self.view_area.all_views()):
            d.volumeChanged.connect(self._sync_invert)
        self.view_area.layoutChanged.connect(self._layout_changed)
        for v in self.view_area.all_views():
            v.cursorInfo.connect(self._cursor_info)
            v.firstImagePainted.connect(self._first_painted)

    def _build_docks(self):
        self.browser = StudyBrowser()
        self.browser.seriesChosen.connect(self.loading._series_chosen)
        self.browser_dock = QDockWidget("Studies", self)
        self.browser_dock.setObjectName("StudiesDock")
        self.browser_dock.setWidget(self.browser)
        self.browser_dock.setMinimumWidth(DOCK_MIN_WIDTH)
        self.addDockWidget(Qt.LeftDockWidgetArea, self.browser_dock)

        self.layers_panel = LayersPanel(self.doc.layers)
        self.layers_panel.jumpTo.connect(self._jump_to_voxel)
        self.measure_panel = MeasurementsPanel(self.doc)
        self.measure_panel.jumpTo.connect(self._jump_to_measurement)
        self.tag_browser = TagBrowser()
        self.layers_dock = QDockWidget("Overlays", self)
        self.layers_dock.setObjectName("OverlaysDock")
        self.layers_dock.setWidget(self.layers_panel)
        self.measure_dock = QDockWidget("Measurements", self)
        self.measure_dock.setObjectName("MeasurementsDock")
        self.measure_dock.setWidget(self.measure_panel)
        self.tags_dock = QDockWidget("DICOM tags", self)
        self.tags_dock.setObjectName("TagsDock")
        self.tags_dock.setWidget(self.tag_browser)
        for d in (self.layers_dock, self.measure_dock, self.tags_dock):
            d.setMinimumWidth(DOCK_MIN_WIDTH)
            self.addDockWidget(Qt.RightDockWidgetArea, d)
        self.splitDockWidget(self.layers_dock, self.measure_dock, Qt.Vertical)
        self.tabifyDockWidget(self.measure_dock, self.tags_dock)
        self.measure_dock.raise_()
        self.tags = TagsFollower(self, self.tags_dock, self.tag_browser, self.doc)
        self.setTabPosition(Qt.RightDockWidgetArea, QTabWidget.North)

    def _act(self, text, slot=None, shortcut=None, checkable=False, tip=None):
        return actions.make_action(self, text, slot, shortcut, checkable, tip)

    def _connect_doc(self):
        d = self.doc
        d.positionChanged.connect(self._position_changed)
        d.windowChanged.connect(self.presets.window_changed)
        d.volumeChanged.connect(self._volume_changed)
        d.layersChanged.connect(self._layers_changed)
        d.measurementsChanged.connect(self._measurements_changed)

    # ================================================================== opening (SeriesLoading)
    def open_folder_dialog(self):
        rec = self.recent.paths()
        start = rec[0] if rec else os.path.expanduser("~")
        path = QFileDialog.getExistingDirectory(self, "Open DICOM folder", os.path.dirname(start))
        if path:
            self.open_path(path)

    def open_file_dialog(self):
        rec = self.recent.paths()
        start = rec[0] if rec else os.path.expanduser("~")
        paths, _ = QFileDialog.getOpenFileNames(self, "Open DICOM file(s), zip or DICOMDIR",
                                                os.path.dirname(start),
                                                "DICOM (*.dcm *.DCM *.zip DICOMDIR *);;All files (*)")
        if paths:
            self.open_path(paths if len(paths) > 1 else paths[0])

    def open_path(self, path, series: str | None = None, layout: str | None = None):
        """Scan a folder / zip / DICOMDIR / file (or a list) and show a series."""
        self.loading.open_path(path, series, layout)

    def open_slide(self, path: str):
        self.loading.open_slide(path)

    def load_series(self, key: str, stack: int = 0):
        self.loading.load_series(key, stack)

    def cancel_loading(self, quiet=False):
        """Stop scanning / loading.  Slices already read stay on screen."""
        self.loading.cancel_loading(quiet)

    def close_study(self):
        self.loading.close_study()

    @property
    def _thumb_job(self):
        return self.thumbs.job

    # ------------------------------------------------------------------ banner
    def show_banner(self, text: str, error: bool = False):
        self.banner_bar.show_message(text, error)

    def _hide_banner(self):
        self.banner_bar.clear()

    def banner_text(self) -> str:
        return self.banner_bar.text()

    # ================================================================== views
    def active_view(self):
        return self.view_area.active

    def set_tool(self, tool: str):
        self.view_area.set_tool(tool)
        a = self.tool_actions.get(tool)
        if a is not None and not a.isChecked():
            a.setChecked(True)

    def set_layout(self, mode: str):
        got = self.view_area.set_layout(mode)
        if mode == "mpr" and got != "mpr" and self.doc.volume is not None:
            self.statusBar().showMessage("MPR needs a volume with 3-D geometry (several parallel slices)", 5000)
        return got

    def toggle_layout(self):
        self.set_layout("single" if self.view_area.layout_mode == "mpr" else "mpr")

    def _layout_changed(self, mode):
        self.a_single.setChecked(mode == "single")
        self.a_mpr.setChecked(mode == "mpr")
        self.view_area.set_tool(self.active_view().tool)
        self._sync_slider()

    def fit_views(self):
        for v in self.view_area.views():
            v.fit()

    def _zoom_step(self, f):
        v = self.active_view()
        v.set_zoom(v.zoom * f)

    def reset_view(self):
        """Window, invert, zoom, pan, rotation and flip of the active viewport's series (the
        three MPR views share one)."""
        doc = self.active_view().doc
        doc.reset_window()
        doc.set_invert(False)
        self._sync_invert()
        for v in self.view_area.views():
            if v.doc is doc:
                v.set_orientation(0, False)
                v.fit()

    def _sync_invert(self, *args):
        """The Invert action's check mark shows the active viewport's invert."""
        on = self.active_view().doc.invert
        if self.a_invert.isChecked() != on:
            self.a_invert.setChecked(on)

    def _set_crosshair(self, on):
        self.doc.show_crosshair = bool(on)
        self.doc.displayChanged.emit()

    def _set_overlays(self, on):
        self.doc.show_overlays = bool(on)
        self.doc.displayChanged.emit()

    def _set_smooth(self, on):
        self.doc.smooth = bool(on)
        self.doc.displayChanged.emit()

    def _set_annotations(self, on):
        self.doc.show_annotations = bool(on)
        self.doc.displayChanged.emit()

    def _toggle_full(self):
        self.showNormal() if self.isFullScreen() else self.showFullScreen()

    def _cursor_info(self, text):
        self.cursor_label.setText(text)

    def _first_painted(self, t):
        if self.first_image_at is None:
            self.first_image_at = t
            self.firstImageShown.emit(t)

    # ------------------------------------------------------------------ slider / cine (SliceBar)
    def _sync_slider(self):
        self.slice_bar.sync()

    def _position_changed(self, axis):
        self._sync_slider()
        if axis in (0, -1):
            self.tags.update_later()

    def toggle_cine(self):
        self.slice_bar.toggle_cine()

    # ------------------------------------------------------------------ window (WindowPresets)
    def _volume_changed(self):
        # the presets rebuild themselves when the document they follow gets a new series
        self._sync_slider()
        self.a_mpr.setEnabled(self.doc.mpr_available)
        self._update_enabled()
        self.tags.update_later()
        if self.view_area.layout_mode == "mpr" and not self.doc.mpr_available:
            self.set_layout("single")

    def apply_preset_name(self, name: str) -> bool:
        return self.presets.apply_name(name)

    def reset_window(self):
        self.doc.reset_window()

    # ------------------------------------------------------------------ tags (TagsFollower)
    def show_tags(self):
        self.tags.show()

    # ------------------------------------------------------------------ layers / measurements
    def add_layer(self, layer: Layer) -> Layer:
        """Add an overlay layer (shape must match the volume); shows the overlays panel."""
        out = self.doc.add_layer(layer)
        self.layers_dock.show()
        return out

    def _layers_changed(self):
        for v in self.view_area.views():
            v.update()

    def _measurements_changed(self):
        if self.doc.measurements:
            self.measure_dock.show()

    def _jump_to_measurement(self, m):
        if m is None or self.doc.volume is None:
            return
        if m.axis != 0 and self.view_area.layout_mode != "mpr":
            self.set_layout("mpr")
        self.doc.set_index(m.axis, m.index)

    def _jump_to_voxel(self, kji):
        self.doc.set_position(kji)

    def threshold_dialog(self):
        overlays.threshold_dialog(self)

    def load_overlay_dialog(self):
        overlays.load_overlay_dialog(self)

    # ------------------------------------------------------------------ AI models (ai_dock)
    def show_model_panel(self):
        ai_dock.show_ai_dock(self)

    # ------------------------------------------------------------------ recent (RecentStudies)
    def _recent(self) -> list[str]:
        return self.recent.paths()

    def _add_recent(self, path: str):
        self.recent.add(path)

    # ------------------------------------------------------------------ drag and drop
    def dragEnterEvent(self, ev):
        if ev.mimeData().hasUrls() and any(u.isLocalFile() for u in ev.mimeData().urls()):
            ev.acceptProposedAction()

    def dropEvent(self, ev):
        paths = [u.toLocalFile() for u in ev.mimeData().urls() if u.isLocalFile()]
        if paths:
            ev.acceptProposedAction()
            self.open_path(paths if len(paths) > 1 else paths[0])

    # ------------------------------------------------------------------ misc
    def _update_enabled(self):
        has = self.doc.volume is not None
        for a in [self.a_save, self.a_fit, self.a_one, self.a_zoom_in, self.a_zoom_out, self.a_invert,
                  self.a_reset, self.a_threshold, self.a_load_overlay, self.a_play, self.a_rot_cw, self.a_rot_ccw,
                  self.a_flip_h, self.a_flip_v] + self.preset_actions:
            a.setEnabled(has)
        self.a_mpr.setEnabled(has and self.doc.mpr_available)
        self.preset_combo.setEnabled(has and not self.doc.volume.is_color)
        self.slab_controls.set_available(self.doc.volume)

    def save_view_dialog(self):
        screenshots.save_view_dialog(self)

    def save_screenshot(self, path: str) -> bool:
        """The whole main window as a PNG."""
        return screenshots.save_screenshot(self, path)

    def show_shortcuts(self):
        actions.show_shortcuts(self)

    def show_about(self):
        actions.show_about(self)

    def closeEvent(self, ev):
        self.cancel_loading(quiet=True)
        panel = getattr(self, "model_panel", None)
        if panel is not None:  # a model run ends with its window: its result has no window left
            panel.stop_run("the window closed")
        if self.slide_page is not None:  # a slide model run / tissue detection stops with the window
            self.slide_page.close_slide()
        self.thumbs.stop()
        self.loading._stop_plain_thumbs()  # the tiles of a folder of plain images (up to 200 reads)
        self.reading.stop()  # the grid viewports' loads (1×2 / 2×2)
        self.slice_bar.stop()
        super().closeEvent(ev)
