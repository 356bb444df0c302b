"""Window/level presets: the Image ▸ Window presets menu, the toolbar combo and the CT
preset keys."""

from __future__ import annotations

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QComboBox

from imaging_assist.volume import WindowPreset


def _num(v: float) -> str:
    """A window value: whole numbers from 100 up, else four significant digits (W 0.5 L 0.25)."""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.4g}"


class WindowPresets(QObject):
    def __init__(self, doc, status, parent=None):
        super().__init__(parent)
        self._doc = None
        self.doc = doc
        self.status = status  # callable(text, ms): the status bar
        self.menu = None
        self.combo = QComboBox()
        self.combo.setMinimumWidth(230)
        self.combo.setSizeAdjustPolicy(QComboBox.AdjustToContents)
        self.combo.setToolTip("Window presets (1-7 CT presets, 0 file window, 9 auto)")
        self.combo.activated.connect(self._combo_chosen)
        self._combo_presets: list = []

    @property
    def doc(self):
        """The document the presets act on (the active viewport's)."""
        return self._doc

    @doc.setter
    def doc(self, doc):
        # follow that document's series: a grid viewport that loads another series while it is
        # active must not keep offering the previous series' presets (a CT's LUNG on an MR)
        if self._doc is not None:
            self._doc.volumeChanged.disconnect(self._volume_changed)
        self._doc = doc
        doc.volumeChanged.connect(self._volume_changed)

    def _volume_changed(self):
        if self.menu is not None:
            self.rebuild()

    def rebuild(self):
        self.menu.clear()
        self.combo.blockSignals(True)
        self.combo.clear()
        vol = self.doc.volume
        presets = list(vol.window_presets) if vol is not None else []
        self._combo_presets = []
        for p in presets:
            if p.source == "voilut":
                label = f"{p.name} (VOI LUT)"
            else:
                from_file = p.source == "dicom" and not p.name.startswith("File window")
                label = f"{p.name}  W {p.width:g} L {p.center:g}" + ("  · file" if from_file else "")
            a = self.menu.addAction(label)
            a.triggered.connect(lambda checked=False, pr=p: self.doc.apply_preset(pr))
            self.combo.addItem(label)
            self._combo_presets.append(p)
        if vol is not None and not vol.is_color:
            self.combo.addItem("Auto (from the data)")
            self._combo_presets.append("auto")
        self.combo.addItem("Custom")
        self._combo_presets.append(None)
        self.combo.blockSignals(False)
        self.window_changed()

    def _combo_chosen(self, i):
        p = self._combo_presets[i] if i < len(self._combo_presets) else None
        if p == "auto":
            self.apply_name("auto")
        elif isinstance(p, WindowPreset):
            self.doc.apply_preset(p)

    def window_changed(self):
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
        self.combo.blockSignals(True)
        self.combo.setCurrentIndex(idx)
        if w is not None and idx == len(self._combo_presets) - 1:
            self.combo.setItemText(idx, f"Custom  W {_num(w.width)} L {_num(w.center)}")
        self.combo.blockSignals(False)

    def apply_name(self, name: str) -> bool:
        if self.doc.volume is None or self.doc.volume.is_color:
            return False
        if name != "auto" and self.doc.volume.units != "HU":
            self.status(f"{name}: CT presets need CT (HU) images", 4000)
            return False
        p = self.doc.preset_by_name(name)
        if p is None:
            return False
        self.doc.apply_preset(p)
        return True
