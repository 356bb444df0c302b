"""The main window: study browser, view area (single or MPR), panels, menus, loading."""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
from PySide6.QtCore import QSettings, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QDockWidget, QDoubleSpinBox,
                               QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
                               QListWidget, QListWidgetItem, QMainWindow, QMessageBox,
                               QProgressBar, QPushButton, QSlider, QSpinBox, QStackedWidget,
                               QTabWidget, QToolBar, QToolButton, QVBoxLayout, QWidget)

from imaging_assist import display
from imaging_assist.layers import LabelLayer, Layer
from imaging_assist.volume import WindowPreset

from ..radiology.browser import StudyBrowser
from ..radiology.document import ViewerDocument
from ..radiology.layers_panel import LayersPanel
from ..radiology.loading import LoadJob, ScanJob, ThumbnailJob
from ..radiology.measure_tools import MeasurementsPanel
from ..radiology.mpr import ViewArea
from ..radiology.tag_browser import TagBrowser

MAX_RECENT = 10
CACHE_BYTES = 1536 * 1024**2  # keep recently viewed volumes up to this size

CT_PRESET_KEYS = ["Brain", "Subdural", "Stroke", "Lung", "Mediastinum", "Abdomen", "Bone"]

SHORTCUTS = [
    ("Open folder / file", "Ctrl+O / Ctrl+Shift+O"),
    ("Next / previous slice", "Wheel, ↓ / ↑, → / ←"),
    ("10 slices, first / last", "PgDn / PgUp, Home / End"),
    ("Fast scroll", "Shift+Wheel"),
    ("Zoom", "Ctrl+Wheel, + / -"),
    ("Fit / 1:1", "F / Ctrl+0"),
    ("Window / level", "right-drag (or W tool)"),
    ("Pan", "middle-drag (or P tool)"),
    ("CT presets Brain … Bone", "1 … 7"),
    ("File (DICOM) window / auto window", "0 / 9"),
    ("Invert / reset view", "I / R"),
    ("Navigate tool (MPR: crosshair)", "Esc or V"),
    ("Ruler / ellipse / rectangle / angle", "M / E / B / A"),
    ("Delete selected measurement", "Del"),
    ("Single view / MPR", "Ctrl+1 / Ctrl+3  (toggle: L)"),
    ("Crosshair on/off", "X"),
    ("Overlays on/off", "O"),
    ("Annotations on/off", "T"),
    ("Smooth (interpolated) display on/off", "S"),
    ("Cine play / pause", "Space"),
    ("DICOM tags", "Ctrl+D"),
    ("Full screen", "F11"),
]


class MainWindow(QMainWindow):
    loadFinished = Signal(bool)     # True when the series loaded (False: error/cancel)
    firstImageShown = Signal(float)  # perf_counter() of the first painted slice
    thumbnailsDone = Signal()

    def __init__(self, settings: QSettings | None = None, parent=None):
        super().__init__(parent)
        self.settings = settings if settings is not None else QSettings("ImagingAssist", "Imaging Assist")
        self.setWindowTitle("Imaging Assist")
        self.setAcceptDrops(True)
        self.setDockNestingEnabled(True)
        self.doc = ViewerDocument(self)
        self.index = None
        self._thumbs_done: set[str] = set()  # series keys whose thumbnail is shown
        self.root_paths: list[str] = []
        self.current_key: str | None = None
        self.current_stack = 0
        self.plans = []
        self._scan_job: ScanJob | None = None
        self._load_job: LoadJob | None = None
        self._thumb_job: ThumbnailJob | None = None
        self._pending_series: str | None = None
        self._pending_layout: str | None = None
        self._cache: OrderedDict = OrderedDict()
        self._per_series: dict = {}
        self._shown_key = None
        self.first_image_at: float | None = None
        self.load_state = "idle"  # idle, scanning, loading, done, error
        self.last_error = ""
        self.slide_page = None  # whole-slide images: created on first use (open_slide)

        self._build_central()
        self._build_docks()
        self._build_actions()
        self._build_menus()
        self._build_toolbar()
        self._build_statusbar()
        self._connect_doc()
        self._init_model_panel()
        self._rebuild_window_menu()
        self.resize(1600, 1000)
        self._update_enabled()

    # ================================================================== building
    def _build_central(self):
        self.view_area = ViewArea(self.doc)
        self.banner = QLabel()
        self.banner.setObjectName("Banner")
        self.banner.setWordWrap(True)
        self.banner.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.banner.hide()
        self.banner_close = QToolButton()
        self.banner_close.setText("✕")
        self.banner_close.setToolTip("Hide this message")
        self.banner_close.setAutoRaise(True)
        self.banner_close.clicked.connect(self._hide_banner)
        self.banner_close.hide()
        brow = QHBoxLayout()
        brow.setContentsMargins(0, 0, 0, 0)
        brow.setSpacing(0)
        brow.addWidget(self.banner, 1)
        brow.addWidget(self.banner_close)

        # slice slider and cine controls
        self.play_btn = QPushButton("▶ Play")
        self.play_btn.setCheckable(True)
        self.play_btn.setToolTip("Cine: play through the frames / slices (Space)")
        self.play_btn.toggled.connect(self._toggle_cine)
        self.fps = QSpinBox()
        self.fps.setRange(1, 120)
        self.fps.setValue(15)
        self.fps.setSuffix(" fps")
        self.fps.setToolTip("Cine speed")
        self.fps.valueChanged.connect(self._fps_changed)
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, 0)
        self.slider.valueChanged.connect(self._slider_moved)
        self.slice_label = QLabel("")
        self.slice_label.setMinimumWidth(110)
        self.slice_label.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
        bar = QWidget()
        bl = QHBoxLayout(bar)
        bl.setContentsMargins(8, 4, 8, 4)
        bl.addWidget(self.play_btn)
        bl.addWidget(self.fps)
        bl.addWidget(self.slider, 1)
        bl.addWidget(self.slice_label)
        self.slider_bar = bar
        self.cine_timer = QTimer(self)
        self.cine_timer.timeout.connect(self._cine_step)

        viewer_page = QWidget()
        vl = QVBoxLayout(viewer_page)
        vl.setContentsMargins(0, 0, 0, 0)
        vl.setSpacing(0)
        vl.addLayout(brow)
        vl.addWidget(self.view_area, 1)
        vl.addWidget(bar)

        self.welcome = self._build_welcome()
        self.pages = QStackedWidget()
        self.pages.addWidget(self.welcome)
        self.pages.addWidget(viewer_page)
        self.setCentralWidget(self.pages)
        self.view_area.activeViewChanged.connect(lambda v: self._sync_slider())
        self.view_area.layoutChanged.connect(self._layout_changed)
        for v in self.view_area.all_views():
            v.cursorInfo.connect(self._cursor_info)
            v.firstImagePainted.connect(self._first_painted)

    def _build_welcome(self) -> QWidget:
        w = QWidget()
        w.setObjectName("Welcome")
        lay = QVBoxLayout(w)
        lay.addStretch(2)
        title = QLabel("Imaging Assist")
        title.setObjectName("WelcomeTitle")
        title.setAlignment(Qt.AlignCenter)
        hint = QLabel("Open a DICOM folder, zip, DICOMDIR or file — or drop it anywhere in this window.\n"
                      "Research software, not for clinical use.")
        hint.setObjectName("WelcomeHint")
        hint.setAlignment(Qt.AlignCenter)
        row = QHBoxLayout()
        row.addStretch(1)
        b1 = QPushButton("Open folder…")
        b1.clicked.connect(self.open_folder_dialog)
        b2 = QPushButton("Open file…")
        b2.clicked.connect(self.open_file_dialog)
        for b in (b1, b2):
            b.setMinimumWidth(150)
            b.setMinimumHeight(34)
            row.addWidget(b)
        row.addStretch(1)
        self.recent_list = QListWidget()
        self.recent_list.setMaximumWidth(720)
        self.recent_list.setMinimumWidth(520)
        self.recent_list.setMaximumHeight(260)
        self.recent_list.setTextElideMode(Qt.ElideMiddle)
        self.recent_list.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.recent_list.itemActivated.connect(lambda it: self.open_path(it.data(Qt.UserRole)))
        self.recent_list.itemClicked.connect(lambda it: self.open_path(it.data(Qt.UserRole)))
        self.recent_title = QLabel("Recent studies")
        self.recent_title.setObjectName("SectionTitle")
        rl = QVBoxLayout()
        rl.addWidget(self.recent_title)
        rl.addWidget(self.recent_list)
        rrow = QHBoxLayout()
        rrow.addStretch(1)
        rrow.addLayout(rl)
        rrow.addStretch(1)
        lay.addWidget(title)
        lay.addSpacing(8)
        lay.addWidget(hint)
        lay.addSpacing(20)
        lay.addLayout(row)
        lay.addSpacing(24)
        lay.addLayout(rrow)
        lay.addStretch(3)
        return w

    def _build_docks(self):
        self.browser = StudyBrowser()
        self.browser.seriesChosen.connect(self._series_chosen)
        self.browser_dock = QDockWidget("Studies", self)
        self.browser_dock.setObjectName("StudiesDock")
        self.browser_dock.setWidget(self.browser)
        self.browser_dock.setMinimumWidth(350)
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
            d.setMinimumWidth(340)
            self.addDockWidget(Qt.RightDockWidgetArea, d)
        self.splitDockWidget(self.layers_dock, self.measure_dock, Qt.Vertical)
        self.tabifyDockWidget(self.measure_dock, self.tags_dock)
        self.measure_dock.raise_()
        self.tags_dock.visibilityChanged.connect(self._tags_visibility)
        self._tags_timer = QTimer(self)
        self._tags_timer.setSingleShot(True)
        self._tags_timer.setInterval(120)
        self._tags_timer.timeout.connect(self._update_tags_now)
        self.setTabPosition(Qt.RightDockWidgetArea, QTabWidget.North)

    def _act(self, text, slot=None, shortcut=None, checkable=False, tip=None) -> QAction:
        a = QAction(text, self)
        if shortcut:
            if isinstance(shortcut, (list, tuple)):
                a.setShortcuts([QKeySequence(s) for s in shortcut])
            else:
                a.setShortcut(QKeySequence(shortcut))
            a.setShortcutContext(Qt.WindowShortcut)
        a.setCheckable(checkable)
        if tip or shortcut:
            sc = shortcut if isinstance(shortcut, str) else (shortcut[0] if shortcut else "")
            a.setToolTip(f"{tip or text.replace('&', '').rstrip('…')}" + (f"  ({sc})" if sc else ""))
        if slot is not None:
            (a.toggled if checkable else a.triggered).connect(slot)
        self.addAction(a)
        return a

    def _build_actions(self):
        A = self._act
        self.a_open = A("Open &folder…", self.open_folder_dialog, "Ctrl+O")
        self.a_open_file = A("Open f&ile(s)…", self.open_file_dialog, "Ctrl+Shift+O")
        self.a_close = A("&Close study", self.close_study, "Ctrl+W")
        self.a_save = A("&Save view as PNG…", self.save_view_dialog, "Ctrl+S")
        self.a_quit = A("&Quit", self.close, "Ctrl+Q")
        # tools
        self.tool_group = QActionGroup(self)
        self.tool_actions = {}
        for tool, text, key in (("navigate", "Navigate", ("Esc", "V")), ("window", "W/L", "W"),
                                ("pan", "Pan", "P"), ("zoom", "Zoom", "Z"), ("ruler", "Ruler", "M"),
                                ("ellipse", "Ellipse", "E"), ("rectangle", "Rectangle", "B"),
                                ("angle", "Angle", "A")):
            tips = {"navigate": "Navigate: left-drag pans; in MPR, click sets the crosshair",
                    "window": "Window/level with the left button (right-drag works in every tool)",
                    "pan": "Pan", "zoom": "Zoom by dragging up/down", "ruler": "Ruler: distance in mm",
                    "ellipse": "Ellipse ROI: mean/SD/min/max/area", "rectangle": "Rectangle ROI",
                    "angle": "Angle: drag the first arm, click the end of the second"}
            a = A(text, None, key, checkable=True, tip=tips[tool])
            a.triggered.connect(lambda checked=False, t=tool: self.set_tool(t))
            self.tool_group.addAction(a)
            self.tool_actions[tool] = a
        self.tool_actions["navigate"].setChecked(True)
        self.a_delete = A("Delete measurement", self.measure_panel.delete_selected, ("Del", "Backspace"))
        self.a_clear_meas = A("Clear all measurements", self.doc.clear_measurements)
        # view
        self.a_fit = A("&Fit to window", self.fit_views, "F")
        self.a_one = A("&1:1 pixels", lambda: self.active_view().actual_size(), "Ctrl+0")
        self.a_zoom_in = A("Zoom &in", lambda: self._zoom_step(1.25), ("+", "="))
        self.a_zoom_out = A("Zoom &out", lambda: self._zoom_step(0.8), "-")
        self.a_invert = A("&Invert", self.doc.set_invert, "I", checkable=True)
        self.a_reset = A("&Reset view", self.reset_view, "R", tip="Reset window, zoom, pan and invert")
        self.a_single = A("Single view", None, "Ctrl+1", checkable=True)
        self.a_single.triggered.connect(lambda: self.set_layout("single"))
        self.a_mpr = A("MPR (axial / coronal / sagittal)", None, "Ctrl+3", checkable=True)
        self.a_mpr.triggered.connect(lambda: self.set_layout("mpr"))
        self.a_toggle_layout = A("Toggle layout", self.toggle_layout, "L")
        lg = QActionGroup(self)
        lg.addAction(self.a_single)
        lg.addAction(self.a_mpr)
        self.a_single.setChecked(True)
        self.a_crosshair = A("Cross&hair", self._set_crosshair, "X", checkable=True)
        self.a_crosshair.setChecked(True)
        self.a_overlays = A("Show &overlays", self._set_overlays, "O", checkable=True)
        self.a_overlays.setChecked(True)
        self.a_annot = A("Show &annotations", self._set_annotations, "T", checkable=True)
        self.a_annot.setChecked(True)
        self.a_smooth = A("&Smooth display (interpolate)", self._set_smooth, "S", checkable=True)
        self.a_smooth.setChecked(True)
        self.a_play = A("Cine play / pause", self.toggle_cine, "Space")
        self.a_full = A("Full screen", self._toggle_full, "F11")
        self.a_tags = A("DICOM &tags", self.show_tags, "Ctrl+D")
        # window presets
        self.preset_actions = []
        for n, name in enumerate(CT_PRESET_KEYS, 1):
            a = A(f"{name}", None, str(n))
            a.triggered.connect(lambda checked=False, nm=name: self.apply_preset_name(nm))
            self.preset_actions.append(a)
        self.a_default_window = A("File (DICOM) window", self.reset_window, "0")
        self.a_auto_window = A("Auto window (from the data)", lambda: self.apply_preset_name("auto"), "9")
        # overlays
        self.a_threshold = A("Threshold segmentation…", self.threshold_dialog)
        self.a_load_overlay = A("Load overlay from file…", self.load_overlay_dialog)
        self.a_clear_overlays = A("Remove all overlays", lambda: self.doc.layers.clear())
        self.a_help = A("Keyboard shortcuts", self.show_shortcuts, "F1")
        self.a_about = A("About", self.show_about)

    def _build_menus(self):
        mb = self.menuBar()
        m = mb.addMenu("&File")
        m.addActions([self.a_open, self.a_open_file])
        self.recent_menu = m.addMenu("Open &recent")
        m.addSeparator()
        m.addActions([self.a_save, self.a_close])
        m.addSeparator()
        m.addAction(self.a_quit)
        m = mb.addMenu("&View")
        m.addActions([self.a_single, self.a_mpr])
        m.addSeparator()
        m.addActions([self.a_fit, self.a_one, self.a_zoom_in, self.a_zoom_out, self.a_invert, self.a_reset])
        m.addSeparator()
        m.addActions([self.a_crosshair, self.a_overlays, self.a_annot, self.a_smooth, self.a_full])
        m.addSeparator()
        for d in (self.browser_dock, self.layers_dock, self.measure_dock, self.tags_dock):
            m.addAction(d.toggleViewAction())
        m = mb.addMenu("&Image")
        self.window_menu = m.addMenu("&Window presets")
        m.addAction(self.a_default_window)
        m.addAction(self.a_auto_window)
        m.addSeparator()
        m.addAction(self.a_play)
        m.addAction(self.a_tags)
        m = mb.addMenu("&Tools")
        m.addActions(list(self.tool_actions.values()))
        m.addSeparator()
        m.addActions([self.a_delete, self.a_clear_meas])
        m = mb.addMenu("&Overlays")
        m.addActions([self.a_overlays, self.a_threshold, self.a_load_overlay, self.a_clear_overlays])
        m = mb.addMenu("&Help")
        m.addActions([self.a_help, self.a_about])
        self._rebuild_recent_menu()

    def _build_toolbar(self):
        tb = QToolBar("Tools")
        tb.setObjectName("ToolsBar")
        tb.setMovable(False)
        tb.setIconSize(QSize(16, 16))
        tb.setToolButtonStyle(Qt.ToolButtonTextOnly)
        self.addToolBar(Qt.TopToolBarArea, tb)
        tb.addAction(self.a_open)
        tb.addSeparator()
        for a in self.tool_actions.values():
            tb.addAction(a)
        tb.addSeparator()
        tb.addWidget(QLabel(" Window "))
        self.preset_combo = QComboBox()
        self.preset_combo.setMinimumWidth(230)
        self.preset_combo.setSizeAdjustPolicy(QComboBox.AdjustToContents)
        self.preset_combo.setToolTip("Window presets (1-7 CT presets, 0 file window, 9 auto)")
        self.preset_combo.activated.connect(self._preset_combo_chosen)
        tb.addWidget(self.preset_combo)
        tb.addSeparator()
        for a in (self.a_invert, self.a_fit, self.a_one, self.a_reset):
            tb.addAction(a)
        tb.addSeparator()
        for a in (self.a_single, self.a_mpr):
            tb.addAction(a)
        self.a_fit.setIconText("Fit")
        self.a_one.setIconText("1:1")
        self.a_reset.setIconText("Reset")
        self.a_single.setIconText("1×1")
        self.a_mpr.setIconText("MPR")
        self.stack_label = QLabel(" Stack ")
        self.stack_combo = QComboBox()
        self.stack_combo.setToolTip("This series holds several stacks (echoes, phases, time points)")
        self.stack_combo.activated.connect(self._stack_chosen)
        self._stack_actions = [tb.addSeparator(), tb.addWidget(self.stack_label), tb.addWidget(self.stack_combo)]
        for a in self._stack_actions:
            a.setVisible(False)
        self.toolbar = tb

    def _build_statusbar(self):
        sb = self.statusBar()
        self.cursor_label = QLabel("")
        self.cursor_label.setMinimumWidth(420)
        sb.addWidget(self.cursor_label, 1)
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(240)
        self.progress.setMinimumWidth(200)
        self.progress.hide()
        self.progress_label = QLabel("")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setToolTip("Stop loading (slices already read stay visible)")
        self.cancel_btn.clicked.connect(self.cancel_loading)
        self.cancel_btn.hide()
        sb.addPermanentWidget(self.progress_label)
        sb.addPermanentWidget(self.progress)
        sb.addPermanentWidget(self.cancel_btn)
        note = QLabel("Not for clinical use")
        note.setStyleSheet("color: #8b9099;")
        sb.addPermanentWidget(note)

    def _connect_doc(self):
        d = self.doc
        d.positionChanged.connect(self._position_changed)
        d.windowChanged.connect(self._window_changed)
        d.volumeChanged.connect(self._volume_changed)
        d.layersChanged.connect(self._layers_changed)
        d.measurementsChanged.connect(self._measurements_changed)

    # ================================================================== opening
    def open_folder_dialog(self):
        start = self._recent()[0] if self._recent() else os.path.expanduser("~")
        path = QFileDialog.getExistingDirectory(self, "Open DICOM folder", os.path.dirname(start))
        if path:
            self.open_path(path)

    def open_file_dialog(self):
        start = self._recent()[0] if self._recent() else os.path.expanduser("~")
        paths, _ = QFileDialog.getOpenFileNames(self, "Open DICOM file(s), zip or DICOMDIR",
                                                os.path.dirname(start),
                                                "DICOM (*.dcm *.DCM *.zip DICOMDIR *);;All files (*)")
        if paths:
            self.open_path(paths if len(paths) > 1 else paths[0])

    def open_path(self, path, series: str | None = None, layout: str | None = None):
        """Scan a folder / zip / DICOMDIR / file (or a list) and show a series."""
        paths = [str(p) for p in path] if isinstance(path, (list, tuple)) else [str(path)]
        from ..slides.slide_detect import is_slide_target
        if len(paths) == 1 and is_slide_target(paths[0]):
            self.open_slide(paths[0])
            return
        self.cancel_loading(quiet=True)
        self._stop_thumbs()
        self.root_paths = paths
        self._pending_series = series
        self._pending_layout = layout
        self._cache.clear()
        self._per_series.clear()
        self._shown_key = None
        self._hide_banner()
        self.load_state = "scanning"
        self.pages.setCurrentIndex(1)
        self._show_progress("Reading headers…", 0, 0)
        job = ScanJob(paths, self)
        job.progress.connect(self._guard(job, "_scan_job", lambda d, t: self._show_progress("Reading headers…", d, t)))
        job.finished.connect(self._guard(job, "_scan_job", self._scanned))
        job.failed.connect(self._guard(job, "_scan_job", self._scan_failed))
        self._scan_job = job
        job.start()
        if len(paths) == 1:
            QTimer.singleShot(1500, lambda p=paths[0]: self._add_recent(p))

    def open_slide(self, path: str):
        """Show a whole-slide image (SVS, NDPI, tiled TIFF, DICOM WSI, ...) in the slide view
        instead of the radiology view (ui/slide_page.py; it reports through loadFinished)."""
        if self.slide_page is None:
            from ..slides.slide_page import SlidePage
            self.slide_page = SlidePage(self)
            self.pages.addWidget(self.slide_page)
        self.close_study()
        self._hide_banner()
        self.pages.setCurrentWidget(self.slide_page)
        self.slide_page.open(path)
        QTimer.singleShot(1500, lambda p=path: self._add_recent(p))

    def _guard(self, job, attr, fn):
        """A slot that runs fn only while job is still the current one (stale jobs are ignored)."""
        def slot(*args):
            if getattr(self, attr) is job:
                fn(*args)
        return slot

    def _scan_failed(self, msg):
        self._scan_job = None
        self._hide_progress()
        self.load_state = "error"
        self.last_error = msg
        if msg != "cancelled":
            self.show_banner(f"Could not read {', '.join(self.root_paths)}: {msg}", error=True)
        self.loadFinished.emit(False)

    def _scanned(self, index):
        self._scan_job = None
        self.index = index
        self._thumbs_done = set()
        self.browser.set_index(index)
        series = index.image_series()
        if not series:
            self._hide_progress()
            self.load_state = "error"
            n = len(index.problems)
            self.last_error = "no images"
            self.show_banner(f"No viewable images in {', '.join(self.root_paths)}"
                             + (f" — {n} file(s) could not be read; the reasons are listed under Studies." if n else "."),
                             error=True)
            self.doc.set_volume(None)
            self.loadFinished.emit(False)
            return
        chosen = None
        if self._pending_series:
            chosen = index.find_series(self._pending_series)
            if chosen is None:
                self.show_banner(f"Series {self._pending_series} not found; showing the largest series instead.")
        if chosen is None:
            chosen = max(series, key=lambda s: (s.n_frames, -series.index(s)))
        self.load_series(chosen.key)

    def _series_chosen(self, key):
        if key == self.current_key and self.doc.volume is not None:
            return
        s = self.index.find_series(key) if self.index else None
        if s is None or not s.is_image:
            self.statusBar().showMessage("This series has no images to show", 4000)
            return
        self.load_series(key)

    def load_series(self, key: str, stack: int = 0):
        s = self.index.find_series(key)
        if s is None:
            return
        if self._load_job is not None:
            self._load_job.cancel()
            self._load_job = None
        self.play_btn.setChecked(False)
        self.current_key = key
        self.current_stack = stack
        self.browser.set_current(key)
        cached = self._cache.get((key, stack))
        if cached is not None:
            self._cache.move_to_end((key, stack))
            vol, plans = cached
            self.plans = plans
            self._set_volume(vol, s)
            self._update_stacks()
            self.load_state = "done"
            self.loadFinished.emit(True)
            return
        self.load_state = "loading"
        self._show_progress("Loading…", 0, max(1, s.n_frames))
        job = LoadJob(s, stack, self)
        job.planned.connect(self._guard(job, "_load_job", lambda vol, plans: self._planned(plans)))
        job.first.connect(self._guard(job, "_load_job", lambda vol, k: self._first_slice(vol, k, s)))
        job.sliceLoaded.connect(self._guard(job, "_load_job", self._slice_in))
        job.progress.connect(self._guard(job, "_load_job", lambda d, t: self._show_progress("Loading…", d, t)))
        job.done.connect(self._guard(job, "_load_job", self._loaded))
        job.failed.connect(self._guard(job, "_load_job", self._load_failed))
        self._load_job = job
        job.start()

    def _planned(self, plans):
        self.plans = plans
        self._update_stacks()

    def _set_volume(self, vol, series):
        # measurements and overlays belong to their series: keep them for when it comes back
        if self.doc.volume is not None and self._shown_key is not None:
            self._per_series[self._shown_key] = (self.doc.volume, list(self.doc.measurements),
                                                 self.doc.layers.layers)
        pat = self.index.patient_of(series) if self.index else None
        st = self.index.study_of(series) if self.index else None
        label = self.plans[self.current_stack].label if len(self.plans) > 1 else ""
        self.doc.set_volume(vol, series, pat, st, label)
        self._shown_key = (self.current_key, self.current_stack)
        saved = self._per_series.get(self._shown_key)
        if saved is not None and saved[0] is vol:
            for m in saved[1]:
                self.doc.measurements.append(m)
            for layer in saved[2]:
                self.doc.layers.add(layer)
            self.doc.measurementsChanged.emit()
        layout = self._pending_layout
        self._pending_layout = None
        if layout:
            self.set_layout(layout)
        elif self.view_area.layout_mode == "mpr" and not self.doc.mpr_available:
            self.set_layout("single")
        if vol.warnings:
            self.show_banner("  •  ".join(vol.warnings))
        else:
            self._hide_banner()
        who = (pat.name.replace("^", " ") if pat else "") or "Imaging Assist"
        self.setWindowTitle(f"{who} — {series.description or series.modality} — Imaging Assist")
        if vol.is_cine and vol.frame_time_ms:
            self.fps.setValue(int(round(min(120, max(1, 1000.0 / vol.frame_time_ms)))))

    def _first_slice(self, vol, k, series):
        self._set_volume(vol, series)

    def _slice_in(self, k):
        if self.doc.volume is not None:
            self.doc.sliceLoaded.emit(k)

    def _loaded(self, vol):
        job = self._load_job
        self._load_job = None
        self._hide_progress()
        self.load_state = "done"
        if self.doc.volume is not vol:  # e.g. the first slice failed but later ones loaded
            s = self.index.find_series(self.current_key)
            self._set_volume(vol, s)
        elif vol.warnings:
            self.show_banner("  •  ".join(vol.warnings))
        self.doc.loadFinished.emit()
        for v in self.view_area.all_views():
            v._img_cache = None
            v.update()
        if not (job is not None and job.cancelled):
            self._cache[(self.current_key, self.current_stack)] = (vol, self.plans)
            self._trim_cache()
        self._thumb_from_volume(vol)
        self._start_thumbs()
        self._update_tags_later()
        self.loadFinished.emit(True)

    def _load_failed(self, msg):
        self._load_job = None
        self._hide_progress()
        self.load_state = "error"
        self.last_error = msg
        self.show_banner(f"This series cannot be shown: {msg}", error=True)
        if self.current_key:
            self.browser.set_unviewable(self.current_key, msg)
            self._thumbs_done.add(self.current_key)
        self._start_thumbs()
        self.loadFinished.emit(False)

    def cancel_loading(self, quiet=False):
        """Stop scanning / loading.  Slices already read stay on screen."""
        if self._scan_job is not None:
            self._scan_job.cancel()
            self._scan_job = None
            if not quiet:
                self.load_state = "cancelled"
                self.statusBar().showMessage("Reading headers cancelled", 5000)
                self.loadFinished.emit(False)
        if self._load_job is not None:
            self._load_job.cancel()
            if quiet:
                self._load_job = None
            else:  # the job stops after the slice in hand and reports what it has (see _loaded)
                self.statusBar().showMessage("Loading cancelled; the slices read so far stay visible", 5000)
        self._hide_progress()

    def close_study(self):
        self.cancel_loading(quiet=True)
        self._stop_thumbs()
        self.index = None
        self.current_key = None
        self.doc.set_volume(None)
        self.browser.tree.clear()
        self.browser.set_problems([])
        self.pages.setCurrentIndex(0)
        self._refresh_recent_list()
        self.setWindowTitle("Imaging Assist")

    def _trim_cache(self):
        total = sum(v[0].array.nbytes for v in self._cache.values())
        while len(self._cache) > 1 and total > CACHE_BYTES:
            _, (vol, _) = self._cache.popitem(last=False)
            total -= vol.array.nbytes

    # ------------------------------------------------------------------ thumbnails
    def _start_thumbs(self):
        if self.index is None or self._thumb_job is not None:
            return
        todo = [s for s in self.index.image_series() if s.key != self.current_key
                and s.key not in self._thumbs_done]
        if not todo:
            self.thumbnailsDone.emit()
            return
        job = ThumbnailJob(todo, self)
        job.ready.connect(self._thumb_ready)
        job.failed.connect(self._thumb_failed)
        job.finished.connect(lambda j=job: self._thumbs_finished(j))
        self._thumb_job = job
        job.start()

    def _thumbs_finished(self, job):
        if job is self._thumb_job:
            self._thumb_job = None
            self.thumbnailsDone.emit()

    def _stop_thumbs(self):
        if self._thumb_job is not None:
            self._thumb_job.cancel()
            self._thumb_job = None

    def _thumb_ready(self, key, img, aspect):
        self.browser.set_thumbnail(key, img, aspect)
        self._thumbs_done.add(key)

    def _thumb_failed(self, key, reason):
        """A series whose thumbnail cannot be made is marked (tile + problems line), not retried."""
        self.browser.set_unviewable(key, reason)
        self._thumbs_done.add(key)

    def _thumb_from_volume(self, vol):
        try:
            k = vol.n_slices // 2
            if vol.loaded is not None and not vol.loaded[k]:
                k = int(np.argmax(vol.loaded))
            img = display.render_slice(vol, k, self.doc.default_window)
            step = max(1, max(img.shape[:2]) // 192)
            self.browser.set_thumbnail(self.current_key, np.ascontiguousarray(img[::step, ::step]),
                                       (vol.spacing[0], vol.spacing[1]))
            self._thumbs_done.add(self.current_key)
        except Exception:  # noqa: BLE001 - a thumbnail is optional
            pass

    # ------------------------------------------------------------------ stacks
    def _update_stacks(self):
        multi = len(self.plans) > 1
        for a in self._stack_actions:
            a.setVisible(multi)
        self.stack_combo.clear()
        if multi:
            for n, p in enumerate(self.plans):
                self.stack_combo.addItem(f"{n + 1} of {len(self.plans)} ({len(p.slots)} images)")
            self.stack_combo.setCurrentIndex(self.current_stack)

    def _stack_chosen(self, i):
        if i != self.current_stack and self.current_key:
            self.load_series(self.current_key, i)

    # ------------------------------------------------------------------ progress / banner
    def _show_progress(self, text, done, total):
        self.progress_label.setText(text)
        self.progress.setRange(0, total if total else 0)
        if total:
            self.progress.setValue(done)
            self.progress.setFormat(f"{done} / {total}")
        self.progress.show()
        self.progress_label.show()
        self.cancel_btn.show()

    def _hide_progress(self):
        self.progress.hide()
        self.progress_label.setText("")
        self.cancel_btn.hide()

    def show_banner(self, text: str, error: bool = False):
        self.banner.setObjectName("BannerError" if error else "Banner")
        self.banner.setStyleSheet("")  # re-polish with the new object name
        self.banner.style().unpolish(self.banner)
        self.banner.style().polish(self.banner)
        self.banner.setText(("⛔ " if error else "⚠ ") + text)
        self.banner.show()
        self.banner_close.show()

    def _hide_banner(self):
        self.banner.hide()
        self.banner_close.hide()

    def banner_text(self) -> str:
        return self.banner.text() if self.banner.isVisible() else ""

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
        self.doc.reset_window()
        self.a_invert.setChecked(False)
        self.doc.set_invert(False)
        for v in self.view_area.views():
            v.fit()

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

    # ------------------------------------------------------------------ slider / cine
    def _sync_slider(self):
        v = self.active_view()
        n = v.n_slices
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(0, n - 1))
        self.slider.setValue(v.index if n else 0)
        self.slider.blockSignals(False)
        for w in (self.slider, self.play_btn, self.fps):
            w.setVisible(n > 1)
        vol = self.doc.volume
        if vol is None or not n:
            self.slice_label.setText("")
        else:
            label = "Frame" if vol.is_cine else ("Image" if v.plane.axis == 0 else v.plane.name.capitalize())
            self.slice_label.setText(f"{label} {v.index + 1} / {n}")

    def _slider_moved(self, value):
        v = self.active_view()
        self.doc.set_index(v.plane.axis, value)

    def _position_changed(self, axis):
        self._sync_slider()
        if axis in (0, -1):
            self._update_tags_later()

    def toggle_cine(self):
        self.play_btn.toggle()

    def _toggle_cine(self, on):
        self.play_btn.setText("❚❚ Pause" if on else "▶ Play")
        if on:
            self.cine_timer.start(int(round(1000 / self.fps.value())))
        else:
            self.cine_timer.stop()

    def _fps_changed(self, v):
        if self.cine_timer.isActive():
            self.cine_timer.setInterval(int(round(1000 / v)))

    def _cine_step(self):
        v = self.active_view()
        n = v.n_slices
        if n <= 1:
            self.play_btn.setChecked(False)
            return
        self.doc.set_index(v.plane.axis, (v.index + 1) % n)

    # ------------------------------------------------------------------ window
    def _volume_changed(self):
        self._rebuild_window_menu()
        self._sync_slider()
        self.a_invert.setChecked(False)
        self.a_mpr.setEnabled(self.doc.mpr_available)
        self._update_enabled()
        self._update_tags_later()
        if self.view_area.layout_mode == "mpr" and not self.doc.mpr_available:
            self.set_layout("single")

    def _rebuild_window_menu(self):
        self.window_menu.clear()
        self.preset_combo.blockSignals(True)
        self.preset_combo.clear()
        vol = self.doc.volume
        presets = list(vol.window_presets) if vol is not None else []
        self._combo_presets = []
        for p in presets:
            if p.source == "voilut":
                label = f"{p.name} (VOI LUT)"
            else:
                label = f"{p.name}  W {p.width:g} L {p.center:g}" + ("  · file" if p.source == "dicom" else "")
            a = self.window_menu.addAction(label)
            a.triggered.connect(lambda checked=False, pr=p: self.doc.apply_preset(pr))
            self.preset_combo.addItem(label)
            self._combo_presets.append(p)
        if vol is not None and not vol.is_color:
            self.preset_combo.addItem("Auto (from the data)")
            self._combo_presets.append("auto")
        self.preset_combo.addItem("Custom")
        self._combo_presets.append(None)
        self.preset_combo.blockSignals(False)
        self._window_changed()

    def _preset_combo_chosen(self, i):
        p = self._combo_presets[i] if i < len(self._combo_presets) else None
        if p == "auto":
            self.apply_preset_name("auto")
        elif isinstance(p, WindowPreset):
            self.doc.apply_preset(p)

    def _window_changed(self):
        w = self.doc.window
        idx = len(self._combo_presets) - 1
        if w is not None:
            for i, p in enumerate(self._combo_presets):
                if isinstance(p, WindowPreset) and p.name == w.name and (
                        p.source == "voilut" or (p.center == w.center and p.width == w.width)):
                    idx = i
                    break
                if p == "auto" and w.source == "auto" and w.name == "Auto":
                    idx = i
        self.preset_combo.blockSignals(True)
        self.preset_combo.setCurrentIndex(idx)
        if w is not None and idx == len(self._combo_presets) - 1:
            self.preset_combo.setItemText(idx, f"Custom  W {w.width:.0f} L {w.center:.0f}")
        self.preset_combo.blockSignals(False)

    def apply_preset_name(self, name: str) -> bool:
        if self.doc.volume is None or self.doc.volume.is_color:
            return False
        if name != "auto" and self.doc.volume.units != "HU":
            self.statusBar().showMessage(f"{name}: CT presets need CT (HU) images", 4000)
            return False
        p = self.doc.preset_by_name(name)
        if p is None:
            return False
        self.doc.apply_preset(p)
        return True

    def reset_window(self):
        self.doc.reset_window()

    # ------------------------------------------------------------------ tags
    def show_tags(self):
        self.tags_dock.show()
        self.tags_dock.raise_()
        if self.tags_dock.width() < 520 and self.width() > 1500:
            self.resizeDocks([self.tags_dock], [560], Qt.Horizontal)
        self._update_tags_now()

    def _tags_visibility(self, visible):
        if visible:
            self._update_tags_now()

    def _update_tags_later(self):
        if self.tags_dock.isVisible() and not self.tags_dock.visibleRegion().isEmpty():
            self._tags_timer.start()

    def _update_tags_now(self):
        vol = self.doc.volume
        if vol is None or not vol.headers:
            self.tag_browser.show_record(None)
            return
        k = min(self.doc.position[0], len(vol.headers) - 1)
        rec = vol.headers[k]
        frames = getattr(vol, "frames", None)
        fr = f", frame {frames[k] + 1}" if frames and rec.frames > 1 else ""
        self.tag_browser.show_record(rec, f"Image {k + 1} of {vol.n_slices}{fr} — {os.path.basename(rec.display_path)}")

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
        vol = self.doc.volume
        if vol is None or vol.is_color:
            return
        dlg = QDialog(self)
        dlg.setWindowTitle("Threshold segmentation")
        form = QFormLayout(dlg)
        lo_v, hi_v = vol.value_range()
        lo = QDoubleSpinBox()
        hi = QDoubleSpinBox()
        for sb in (lo, hi):
            sb.setRange(lo_v - 1, hi_v + 1)
            sb.setDecimals(0 if vol.array.dtype.kind in "iu" else 2)
        is_ct = vol.units == "HU"
        lo.setValue(300 if is_ct else (lo_v + hi_v) / 2)
        hi.setValue(hi_v)
        name = QLineEdit("Bone (> 300 HU)" if is_ct else "Threshold")
        units = f" ({vol.units})" if vol.units else ""
        form.addRow(f"From{units}", lo)
        form.addRow(f"To{units}", hi)
        form.addRow("Label name", name)
        bb = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        bb.accepted.connect(dlg.accept)
        bb.rejected.connect(dlg.reject)
        form.addRow(bb)
        if dlg.exec() != QDialog.Accepted:
            return
        mask = ((vol.array >= lo.value()) & (vol.array <= hi.value())).astype(np.uint8)
        self.add_layer(LabelLayer(name.text() or "Threshold", mask, names={1: name.text() or "Threshold"},
                                  opacity=0.45))

    def load_overlay_dialog(self):
        vol = self.doc.volume
        if vol is None:
            return
        path, _ = QFileDialog.getOpenFileName(self, "Load overlay (label map or heat map)", "",
                                              "Arrays (*.npy *.nii *.nii.gz);;All files (*)")
        if not path:
            return
        try:
            from imaging_assist.layers import load_overlay
            layer = load_overlay(path, vol)
            self.add_layer(layer)
        except Exception as e:  # noqa: BLE001
            QMessageBox.warning(self, "Overlay", f"Could not load {os.path.basename(path)}:\n{e}")

    # ------------------------------------------------------------------ AI models
    def _init_model_panel(self):
        """The AI model dock (ui/model_panel.py), tabbed with Studies; its results arrive as
        layers through add_layer.  It lists the models the first time it is shown."""
        from ..ai.model_panel import ModelPanel
        self.model_panel = ModelPanel(self.doc, add_layer=self.add_layer)
        self.model_dock = QDockWidget("AI models", self)
        self.model_dock.setObjectName("ModelsDock")
        self.model_dock.setWidget(self.model_panel)
        self.model_dock.setMinimumWidth(420)
        self.addDockWidget(Qt.LeftDockWidgetArea, self.model_dock)
        self.tabifyDockWidget(self.browser_dock, self.model_dock)
        self.setTabPosition(Qt.LeftDockWidgetArea, QTabWidget.North)
        self.browser_dock.raise_()
        self.a_models = self._act("AI models…", self.show_model_panel, "Ctrl+M",
                                  tip="Run an AI model on the shown series")
        for a in self.menuBar().actions():
            if a.menu() is not None and a.text() in ("&View", "&Overlays"):
                a.menu().addSeparator()
                a.menu().addAction(self.model_dock.toggleViewAction() if a.text() == "&View" else self.a_models)

    def show_model_panel(self):
        self.model_dock.show()
        self.model_dock.raise_()

    # ------------------------------------------------------------------ recent
    def _recent(self) -> list[str]:
        v = self.settings.value("recent", [])
        if isinstance(v, str):
            v = [v]
        return [str(x) for x in (v or [])]

    def _add_recent(self, path: str):
        path = os.path.abspath(path)
        lst = [p for p in self._recent() if p != path]
        lst.insert(0, path)
        self.settings.setValue("recent", lst[:MAX_RECENT])  # written by Qt later, off the critical path
        self._rebuild_recent_menu()

    def _rebuild_recent_menu(self):
        self.recent_menu.clear()
        rec = self._recent()
        for p in rec:
            a = self.recent_menu.addAction(p)
            a.triggered.connect(lambda checked=False, pp=p: self.open_path(pp))
        self.recent_menu.setEnabled(bool(rec))
        if rec:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear list", self._clear_recent)
        self._refresh_recent_list()

    def _clear_recent(self):
        self.settings.setValue("recent", [])
        self._rebuild_recent_menu()

    def _refresh_recent_list(self):
        self.recent_list.clear()
        rec = self._recent()
        for p in rec:
            name = os.path.basename(p.rstrip("/")) or p
            text = f"{name}    —    {os.path.dirname(p.rstrip('/'))}"
            it = QListWidgetItem(text if os.path.exists(p) else f"{text}  (missing)")
            it.setToolTip(p)
            it.setData(Qt.UserRole, p)
            self.recent_list.addItem(it)
        self.recent_list.setVisible(bool(rec))
        self.recent_title.setVisible(bool(rec))

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
                  self.a_reset, self.a_threshold, self.a_load_overlay, self.a_play] + self.preset_actions:
            a.setEnabled(has)
        self.a_mpr.setEnabled(has and self.doc.mpr_available)
        self.preset_combo.setEnabled(has and not self.doc.volume.is_color)

    def save_view_dialog(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save view as PNG", "view.png", "PNG (*.png)")
        if path:
            self.view_area.grab().save(path)

    def save_screenshot(self, path: str) -> bool:
        """The whole main window as a PNG."""
        return self.grab().save(path)

    def show_shortcuts(self):
        text = "<table cellspacing=6>" + "".join(
            f"<tr><td>{what}</td><td><b>{keys}</b></td></tr>" for what, keys in SHORTCUTS) + "</table>"
        QMessageBox.information(self, "Keyboard shortcuts", text)

    def show_about(self):
        QMessageBox.about(self, "About Imaging Assist",
                          "Imaging Assist — DICOM viewer with local model overlays.\n"
                          "Research software. NOT FOR CLINICAL USE.")

    def closeEvent(self, ev):
        self.cancel_loading(quiet=True)
        self._stop_thumbs()
        self.cine_timer.stop()
        super().closeEvent(ev)
