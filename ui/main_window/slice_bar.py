"""The bar under the views: slice slider, "Image n / N" and the cine controls."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSlider, QSpinBox, QWidget


class SliceBar(QWidget):
    def __init__(self, doc, view_area, parent=None):
        super().__init__(parent)
        self.doc = doc
        self.view_area = view_area
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
        self.slider.setMinimumWidth(100)  # on a small screen the docks narrow first, not the slider
        self.slice_label = QLabel("")
        self.slice_label.setMinimumWidth(110)
        self.slice_label.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
        bl = QHBoxLayout(self)
        bl.setContentsMargins(8, 4, 8, 4)
        bl.addWidget(self.play_btn)
        bl.addWidget(self.fps)
        bl.addWidget(self.slider, 1)
        bl.addWidget(self.slice_label)
        self.cine_timer = QTimer(self)
        self.cine_timer.timeout.connect(self._cine_step)

    def sync(self):
        v = self.view_area.active
        n = v.n_slices
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(0, n - 1))
        self.slider.setValue(v.index if n else 0)
        self.slider.blockSignals(False)
        for w in (self.slider, self.play_btn, self.fps):
            w.setVisible(n > 1)
        vol = v.doc.volume  # the active viewport's series (grid layouts: each has its own)
        if vol is None or not n:
            self.slice_label.setText("")
        else:
            label = "Frame" if vol.is_cine else ("Image" if v.plane.axis == 0 else v.plane.name.capitalize())
            self.slice_label.setText(f"{label} {v.index + 1} / {n}")

    def _slider_moved(self, value):
        v = self.view_area.active
        v.doc.set_index(v.plane.axis, value)

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
        v = self.view_area.active
        n = v.n_slices
        if n <= 1:
            self.play_btn.setChecked(False)
            return
        v.doc.set_index(v.plane.axis, (v.index + 1) % n)

    def stop(self):
        self.cine_timer.stop()
