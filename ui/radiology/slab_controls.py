"""Thick slab (MIP / MinIP / average) of the active view: mode and thickness in the bar under
the views (beside the slice slider, where 3D Slicer keeps them), the Image ▸ Thick slab menu, and ``view --slab MODE:MM``.  The projection itself is
``imaging_assist.slab`` (no Qt); each view keeps its own slab, as in RadiAnt or OHIF, so an
axial MIP can sit beside plain coronal and sagittal planes."""

from __future__ import annotations

from PySide6.QtCore import QObject
from PySide6.QtGui import QAction, QActionGroup
from PySide6.QtWidgets import QComboBox

from imaging_assist.slab import MAX_THICKNESS_MM, MODES, Slab

from ..shared.spinbox import DecimalSpinBox

CHOICES = [("Slice", None)] + [(name, mode) for mode, name in MODES.items()]
DEFAULT_MM = 10.0
TIPS = {None: "The slice itself",
        "mip": "Maximum intensity over the slab: nodules stay dots, vessels become branching lines",
        "minip": "Minimum intensity over the slab: airways, emphysema, air trapping",
        "avg": "Average over the slab: less noise, like a thicker reconstruction"}


class SlabControls(QObject):
    """Mode combo + thickness box in the slice bar and a menu; both act on the active view."""

    def __init__(self, win):
        super().__init__(win)
        self.w = win
        self._available = True  # the shown series can have a slab (set_available)
        self._explicit = False  # view --slab: the first hanging protocol leaves the slabs alone
        self.combo = QComboBox()
        self.combo.setObjectName("SlabMode")
        for n, (text, mode) in enumerate(CHOICES):
            self.combo.addItem(text, mode)
            self.combo.setItemData(n, TIPS[mode], 3)  # Qt.ToolTipRole
        self.combo.setToolTip("Thick slab of the active view: MIP, MinIP or average over the thickness")
        self.thickness = DecimalSpinBox()  # "2.5" is 2.5 mm under every LANG
        self.thickness.setObjectName("SlabThickness")
        self.thickness.setRange(0.5, MAX_THICKNESS_MM)
        self.thickness.setDecimals(1)
        self.thickness.setSingleStep(1.0)
        self.thickness.setSuffix(" mm")
        self.thickness.setValue(DEFAULT_MM)
        self.thickness.setToolTip("Slab thickness: the slices whose centres lie within ± half of it")
        self.thickness.setKeyboardTracking(False)
        self.combo.activated.connect(lambda _n: self.apply())
        self.thickness.valueChanged.connect(lambda _v: self.apply() if self.combo.currentData() else None)
        self.actions = QActionGroup(win)
        self.menu_actions: dict = {}
        for text, mode in CHOICES:
            a = QAction(text if mode else "Off (the slice)", win, checkable=True)
            a.setToolTip(TIPS[mode])
            a.triggered.connect(lambda _c=False, m=mode: self.choose(m))
            self.actions.addAction(a)
            self.menu_actions[mode] = a
        self.menu_actions[None].setChecked(True)
        win.view_area.activeViewChanged.connect(self.sync)
        win.view_area.layoutChanged.connect(lambda _m: self.sync(win.active_view()))

    def add_to(self, layout, menu) -> None:
        from PySide6.QtWidgets import QLabel
        self.label = QLabel("Slab")
        layout.addSpacing(12)
        layout.addWidget(self.label)
        layout.addWidget(self.combo)
        layout.addWidget(self.thickness)
        sub = menu.addMenu("Thick &slab")
        sub.addActions(list(self.menu_actions.values()))

    def set_available(self, vol) -> None:
        """Shown for a series that can be projected (several slices with positions, not colour,
        not cine); the menu stays (it says why when chosen)."""
        from imaging_assist.layers import Plane
        from imaging_assist.slab import refusal

        self._available = on = vol is not None and refusal(vol, Plane.native()) is None
        for wdg in (getattr(self, "label", None), self.combo):
            if wdg is not None:
                wdg.setVisible(on)
        self._show_thickness()

    def _show_thickness(self) -> None:
        """The thickness box only with a slab mode chosen: "Slice" has no thickness, and the
        bar under the views keeps the width for its slider on a small screen."""
        self.thickness.setVisible(self._available and self.combo.currentData() is not None)

    def current(self) -> Slab | None:
        mode = self.combo.currentData()
        return None if mode is None else Slab(mode, float(self.thickness.value()))

    def choose(self, mode: str | None) -> None:
        self.combo.setCurrentIndex(self.combo.findData(mode))
        self.apply()

    def apply(self) -> None:
        """Give the active view the slab the controls show; say in the status bar when its
        image cannot have one (its corner says it too)."""
        view = self.w.active_view()
        if view is None:
            return
        why = view.set_slab(self.current())
        self.menu_actions[self.combo.currentData()].setChecked(True)
        self._show_thickness()
        if why:
            self.w.statusBar().showMessage(f"No {view.slab.name} on this image: {why}", 8000)

    def apply_all(self, slab: Slab | None, explicit: bool = False) -> None:
        """Every view; ``explicit`` (``view --slab``): the first study's hanging protocol keeps
        its hands off the slabs."""
        for v in self.w.view_area.all_views():
            v.set_slab(slab)
        self.sync(self.w.active_view())
        self._explicit = explicit

    def consume_explicit(self) -> bool:
        """True once after ``apply_all(..., explicit=True)``."""
        was, self._explicit = self._explicit, False
        return was

    def sync(self, view) -> None:
        """Show the active view's slab in the controls."""
        slab = getattr(view, "slab", None)
        for wdg in (self.combo, self.thickness):
            wdg.blockSignals(True)
        self.combo.setCurrentIndex(self.combo.findData(slab.mode if slab else None))
        if slab is not None:
            self.thickness.setValue(slab.thickness_mm)
        for wdg in (self.combo, self.thickness):
            wdg.blockSignals(False)
        self.menu_actions[slab.mode if slab else None].setChecked(True)
        self._show_thickness()
