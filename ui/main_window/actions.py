"""Menus, actions, toolbar and status bar of the main window, and the help dialogs.

The builders take the window and set its ``a_*`` actions and widgets; the slots they connect
are the window's (it composes the components that do the work)."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QApplication, QComboBox, QLabel, QMessageBox, QProgressBar, QPushButton, QToolBar

from ..shared.text import NOT_FOR_CLINICAL_USE
from ..shared.theme import text_only_toolbar

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
    ("Rotate 90° clockwise / counter-clockwise", "Ctrl+R / Ctrl+Shift+R"),
    ("Flip horizontal / vertical", "H / Shift+H"),
    ("Navigate tool (MPR: crosshair)", "Esc or V"),
    ("Ruler / ellipse / rectangle / angle", "M / E / B / A"),
    ("Polygon / freehand ROI, arrow, text note", "G / D / Shift+A / Shift+T"),
    ("Close a polygon", "double-click, Enter or click its first point"),
    ("Delete selected measurement", "Del"),
    ("Undo / redo (measurements and annotations)", "Ctrl+Z / Ctrl+Y, Ctrl+Shift+Z"),
    ("Analyse the nodule under the mouse (CT)", "Shift+click / N"),
    ("Single view / MPR", "Ctrl+1 / Ctrl+3  (toggle: L)"),
    ("Layouts 1×2 / 2×2 (drag a series into a viewport)", "Ctrl+2 / Ctrl+4"),
    ("Link the active viewport by hand (other frame of reference)", "Ctrl+L"),
    ("Crosshair on/off", "X"),
    ("Overlays on/off", "O"),
    ("Annotations on/off", "T"),
    ("Smooth (interpolated) display on/off", "S"),
    ("Cine play / pause", "Space"),
    ("Cine: step one frame (pauses while playing) / slower, faster", "← / →,  [ / ]  (+ / - while playing)"),
    ("Collapse side bars", "Ctrl+B"),
    ("DICOM tags", "Ctrl+D"),
    ("Reading mode: only images and corner text", "F11"),
]


def make_action(self, text, slot=None, shortcut=None, checkable=False, tip=None) -> QAction:
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


def build_actions(self):
    """Every QAction of the window (``self.a_*``, tools, presets)."""
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
                            ("angle", "Angle", "A"), ("polygon", "Polygon", "G"), ("freehand", "Freehand", "D"),
                            ("arrow", "Arrow", "Shift+A"), ("text", "Text", "Shift+T")):
        tips = {"navigate": "Navigate: left-drag pans; in MPR, click sets the crosshair",
                "window": "Window/level with the left button (right-drag works in every tool)",
                "pan": "Pan", "zoom": "Zoom by dragging up/down", "ruler": "Ruler: distance in mm",
                "ellipse": "Ellipse ROI: mean/SD/min/max/area", "rectangle": "Rectangle ROI",
                "angle": "Angle: drag the first arm, click the end of the second",
                "polygon": "Polygon ROI: click the corners; double-click, Enter or the first point closes it",
                "freehand": "Freehand ROI: drag around the region", "arrow": "Arrow: press on the finding, drag",
                "text": "Text note: click, type, Enter (double-click a note to edit it)"}
        a = A(text, None, key, checkable=True, tip=tips[tool])
        a.triggered.connect(lambda checked=False, t=tool: self.set_tool(t))
        self.tool_group.addAction(a)
        self.tool_actions[tool] = a
    self.tool_actions["navigate"].setChecked(True)
    from ..radiology.annotation_tools import delete_selected, window_actions
    # the active viewport's selection, as Undo / Redo (not always the main viewport's)
    self.a_delete = A("Delete measurement", lambda: _delete(self, delete_selected), ("Del", "Backspace"))
    window_actions(self)  # Undo / Redo (Ctrl+Z, Ctrl+Y), Clear all and Export measurements (DICOM SR)
    # view
    self.a_fit = A("&Fit to window", self.fit_views, "F")
    self.a_one = A("&1:1 pixels", lambda: self.active_view().actual_size(), "Ctrl+0")
    self.a_zoom_in = A("Zoom &in", lambda: self._zoom_step(1.25), ("+", "="))
    self.a_zoom_out = A("Zoom &out", lambda: self._zoom_step(0.8), "-")
    # the active viewport's series (window.py _sync_invert keeps the check mark on it)
    self.a_invert = A("&Invert", lambda on: self.active_view().doc.set_invert(on), "I", checkable=True)
    self.a_reset = A("&Reset view", self.reset_view, "R", tip="Reset window, zoom, pan, invert, rotation and flip")
    # rotate / flip the active view (its letters move with the pixels; measurements stay on theirs)
    self.a_rot_cw = A("Rotate 90° clockwise", lambda: self.active_view().rotate(1), "Ctrl+R")
    self.a_rot_ccw = A("Rotate 90° counter-clockwise", lambda: self.active_view().rotate(-1), "Ctrl+Shift+R")
    self.a_flip_h = A("Flip horizontal", lambda: self.active_view().flip(True), "H")
    self.a_flip_v = A("Flip vertical", lambda: self.active_view().flip(False), "Shift+H")
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


def _delete(self, delete_selected) -> None:
    """Del / Backspace: the selected nodule while the Nodules list has the focus (the list has
    no shortcut of its own: one of the same key made Qt call both ambiguous and fire neither),
    else the selected measurement (``annotation_tools.delete_selected``)."""
    nodules = getattr(self, "nodules", None)
    focus = QApplication.focusWidget()
    if nodules is not None and focus is not None and (focus is nodules.list or nodules.list.isAncestorOf(focus)):
        nodules.delete_selected()
    else:
        delete_selected(self)


def build_menus(self):
    mb = self.menuBar()
    m = mb.addMenu("&File")
    m.addActions([self.a_open, self.a_open_file])
    self.recent_menu = m.addMenu("Open &recent")
    m.addSeparator()
    m.addActions([self.a_save, self.a_close])
    from ..ai.export_report import export_report_action, export_report_deid_action
    m.addAction(export_report_action(self))  # File → Export report… (PDF, issue 13)
    m.addAction(export_report_deid_action(self))  # ... de-identified (issue 16)
    from ..ai.export_dicom import export_dicom_action
    m.addAction(export_dicom_action(self))  # File → Export results (DICOM)… (issue 13)
    m.addAction(self.a_export_sr)  # File → Export measurements (DICOM SR)… (issue 17)
    m.addAction(self.a_export_gsps)  # ... as a presentation state (GSPS), for PACS viewers
    from ..shared.deid_dialog import deid_action
    m.addAction(deid_action(self))  # File → Export de-identified… (issue 16)
    from ..pacs.window import pacs_action
    m.addAction(pacs_action(self))  # File → PACS (query / retrieve / send)… (issue 15)
    m.addSeparator()
    m.addAction(self.a_quit)
    m = mb.addMenu("&Edit")
    m.addActions([self.a_undo, self.a_redo])  # measurements and annotations (issue 17)
    m = mb.addMenu("&View")
    m.addActions([self.a_single, self.a_mpr])
    m.addSeparator()
    m.addActions([self.a_fit, self.a_one, self.a_zoom_in, self.a_zoom_out, self.a_invert, self.a_reset])
    m.addSeparator()
    m.addActions([self.a_rot_cw, self.a_rot_ccw, self.a_flip_h, self.a_flip_v])
    m.addSeparator()
    m.addActions([self.a_crosshair, self.a_overlays, self.a_annot, self.a_smooth, self.a_full])
    m.addSeparator()
    for d in (self.browser_dock, self.layers_dock, self.measure_dock, self.tags_dock):
        m.addAction(d.toggleViewAction())
    m = mb.addMenu("&Image")
    self.window_menu = m.addMenu("&Window presets")
    self.presets.menu = self.window_menu
    m.addAction(self.a_default_window)
    m.addAction(self.a_auto_window)
    m.addSeparator()
    m.addAction(self.a_play)
    m.addAction(self.a_tags)
    from ..radiology.slab_controls import SlabControls
    self.slab_controls = SlabControls(self)  # MIP / MinIP / average slab of the active view:
    self.slab_controls.add_to(self.slice_bar.layout(), m)  # under the views, beside the slider
    m = mb.addMenu("&Tools")
    m.addActions(list(self.tool_actions.values()))
    m.addSeparator()
    m.addActions([self.a_delete, self.a_clear_meas])
    m = mb.addMenu("&Overlays")
    m.addActions([self.a_overlays, self.a_threshold, self.a_load_overlay, self.a_clear_overlays])
    m = mb.addMenu("&Help")
    m.addActions([self.a_help, self.a_about])
    from ..shared.audit_window import audit_action
    m.addAction(audit_action(self))  # Help → Audit trail… (issue 16, read-only)
    self.recent.set_menu(self.recent_menu)


def build_toolbar(self):
    tb = QToolBar("Tools")
    tb.setObjectName("ToolsBar")
    tb.setMovable(False)
    tb.setIconSize(QSize(16, 16))
    text_only_toolbar(tb)
    self.addToolBar(Qt.TopToolBarArea, tb)
    tb.addAction(self.a_open)
    tb.addSeparator()
    from ..radiology.annotation_tools import NEW_TOOLS, annotate_button
    for t, a in self.tool_actions.items():
        if t not in NEW_TOOLS:
            tb.addAction(a)
    tb.addWidget(annotate_button(self))  # polygon, freehand, arrow, text in one drop-down (issue 17)
    tb.addSeparator()
    tb.addWidget(QLabel(" Window "))
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
    self.stack_combo.activated.connect(self.loading._stack_chosen)
    self._stack_actions = [tb.addSeparator(), tb.addWidget(self.stack_label), tb.addWidget(self.stack_combo)]
    for a in self._stack_actions:
        a.setVisible(False)
    self.toolbar = tb


def build_statusbar(self):
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
    note = QLabel(NOT_FOR_CLINICAL_USE)
    note.setStyleSheet("color: #8b9099;")
    sb.addPermanentWidget(note)


def show_shortcuts(self):
    text = "<table cellspacing=6>" + "".join(
        f"<tr><td>{what}</td><td><b>{keys}</b></td></tr>" for what, keys in SHORTCUTS) + "</table>"
    QMessageBox.information(self, "Keyboard shortcuts", text)


def show_about(self):
    QMessageBox.about(self, "About Imaging Assist",
                      "Imaging Assist — DICOM viewer with local model overlays.\n"
                      "Research software. NOT FOR CLINICAL USE.")
