"""Correct a segmentation in place: brush, eraser, fill, undo/redo, adjustable size.

The edits are :class:`imaging_assist.monitoring.edit.LabelEdit` calls (engine, tested without
a screen); this dialog turns mouse events into them and saves through
:func:`imaging_assist.monitoring.feedback.save_correction` (``.npz`` + DICOM SEG for DICOM
inputs, linked to the logged run).  Keys: B brush, E eraser, G fill, [ and ] size,
Ctrl+Z undo, Ctrl+Y / Ctrl+Shift+Z redo, PgUp/PgDn slice.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QImage, QKeySequence, QPainter, QShortcut
from PySide6.QtWidgets import (QButtonGroup, QComboBox, QDialog, QHBoxLayout, QLabel, QMessageBox,
                               QPushButton, QSlider, QSpinBox, QToolButton, QVBoxLayout, QWidget)

from imaging_assist.colormaps import label_lut
from imaging_assist.monitoring.edit import LabelEdit


class _Canvas(QWidget):
    """The slice with the label map over it; maps widget points to (row, column)."""

    edited = Signal()

    def __init__(self, editor: "LabelEditorDialog"):
        super().__init__()
        self.ed = editor
        self.setMinimumSize(360, 360)
        self.setMouseTracking(True)
        self._img: QImage | None = None
        self._stroke = False

    def refresh(self) -> None:
        ed = self.ed
        base = ed.gray[ed.k].astype(np.float32)
        lab = ed.edit.array[ed.k].astype(np.int64)
        col = ed.lut[np.clip(lab, 0, len(ed.lut) - 1)].astype(np.float32)
        a = (0.45 * (lab > 0))[..., None]
        rgb = np.ascontiguousarray(np.clip(base * (1 - a) + col * a, 0, 255).astype(np.uint8))
        h, w = rgb.shape[:2]
        self._buf = rgb  # QImage does not own the memory
        self._img = QImage(rgb.data, w, h, 3 * w, QImage.Format_RGB888)
        self.update()

    def _rect(self) -> QRectF:
        h, w = self.ed.gray.shape[1:3]
        s = min(self.width() / w, self.height() / h)
        return QRectF((self.width() - w * s) / 2, (self.height() - h * s) / 2, w * s, h * s)

    def to_pixel(self, p: QPointF) -> tuple[float, float]:
        r = self._rect()
        h, w = self.ed.gray.shape[1:3]
        return (p.y() - r.top()) * h / r.height() - 0.5, (p.x() - r.left()) * w / r.width() - 0.5

    def to_widget(self, j: float, i: float) -> QPointF:
        r = self._rect()
        h, w = self.ed.gray.shape[1:3]
        return QPointF(r.left() + (i + 0.5) * r.width() / w, r.top() + (j + 0.5) * r.height() / h)

    def paintEvent(self, ev):
        qp = QPainter(self)
        qp.fillRect(self.rect(), Qt.black)
        if self._img is not None:
            qp.drawImage(self._rect(), self._img)

    def mousePressEvent(self, ev):
        if ev.button() == Qt.LeftButton:
            self._stroke = True
            self.ed.apply_at(*self.to_pixel(ev.position()), new_stroke=True)

    def mouseMoveEvent(self, ev):
        if self._stroke and self.ed.tool in ("brush", "eraser"):
            self.ed.apply_at(*self.to_pixel(ev.position()), new_stroke=False)

    def mouseReleaseEvent(self, ev):
        self._stroke = False
        self.ed.edit.end_stroke()


class LabelEditorDialog(QDialog):
    saved = Signal(dict)

    def __init__(self, run_id: int | None, label_map, labels, volume=None, gray=None, parent=None,
                 start_slice: int = 0, run_ref: dict | None = None):
        super().__init__(parent)
        self.setWindowTitle("Correct the segmentation — stays on this computer")
        self.run_id = run_id
        self.run_ref = run_ref  # the result's prediction_log_ref: saved only on that very run
        self.labels = [str(x) for x in labels]
        self.volume = volume
        self.predicted = np.asarray(label_map)
        self.edit = LabelEdit(self.predicted, len(self.labels))
        n = self.edit.array.shape[0]
        if gray is None:
            from imaging_assist.inference.results import display_gray

            gray = np.stack([display_gray(None, volume, k) for k in range(n)])
        self.gray = np.asarray(gray)
        if self.gray.ndim == 3:  # [k, j, i] grey -> RGB
            self.gray = np.repeat(self.gray[..., None], 3, -1)
        self.lut = label_lut(len(self.labels))
        self.k = int(min(max(start_slice, 0), n - 1))
        self.tool = "brush"
        self.result: dict | None = None
        self._build()
        self.canvas.refresh()
        self._update()

    def _build(self):
        self.canvas = _Canvas(self)
        tools = QHBoxLayout()
        self.tool_group = QButtonGroup(self)
        self.tool_btns = {}
        for name, text, key in (("brush", "Brush", "B"), ("eraser", "Eraser", "E"), ("fill", "Fill", "G")):
            b = QToolButton()
            b.setText(f"{text} ({key})")
            b.setCheckable(True)
            b.setShortcut(QKeySequence(key))
            b.clicked.connect(lambda _=False, n=name: self.set_tool(n))
            self.tool_group.addButton(b)
            self.tool_btns[name] = b
            tools.addWidget(b)
        self.tool_btns["brush"].setChecked(True)
        tools.addWidget(QLabel("Size"))
        self.size = QSpinBox()
        self.size.setRange(1, 100)
        self.size.setValue(6)
        self.size.setSuffix(" px")
        self.size.setToolTip("Brush/eraser radius ([ smaller, ] larger)")
        tools.addWidget(self.size)
        QShortcut(QKeySequence("["), self, lambda: self.size.setValue(self.size.value() - 1))
        QShortcut(QKeySequence("]"), self, lambda: self.size.setValue(self.size.value() + 1))
        tools.addWidget(QLabel("Label"))
        self.label_box = QComboBox()
        for i, name in enumerate(self.labels[1:], start=1):
            self.label_box.addItem(name, i)
        tools.addWidget(self.label_box, 1)
        self.undo_btn = QPushButton("Undo")
        self.undo_btn.setShortcut(QKeySequence.Undo)
        self.undo_btn.clicked.connect(self.undo)
        self.redo_btn = QPushButton("Redo")
        self.redo_btn.setShortcut(QKeySequence("Ctrl+Y"))
        QShortcut(QKeySequence("Ctrl+Shift+Z"), self, self.redo)
        self.redo_btn.clicked.connect(self.redo)
        tools.addWidget(self.undo_btn)
        tools.addWidget(self.redo_btn)

        self.slice = QSlider(Qt.Horizontal)
        self.slice.setRange(0, self.edit.array.shape[0] - 1)
        self.slice.setValue(self.k)
        self.slice.valueChanged.connect(self.set_slice)
        self.slice.setVisible(self.edit.array.shape[0] > 1)
        QShortcut(QKeySequence(Qt.Key_PageUp), self, lambda: self.slice.setValue(self.k - 1))
        QShortcut(QKeySequence(Qt.Key_PageDown), self, lambda: self.slice.setValue(self.k + 1))

        self.info = QLabel("")
        self.save_btn = QPushButton("Save correction")
        self.save_btn.setDefault(True)
        self.save_btn.clicked.connect(self.save)
        cancel = QPushButton("Close")
        cancel.clicked.connect(self.reject)
        bottom = QHBoxLayout()
        bottom.addWidget(self.info, 1)
        bottom.addWidget(cancel)
        bottom.addWidget(self.save_btn)
        lay = QVBoxLayout(self)
        lay.addLayout(tools)
        lay.addWidget(self.canvas, 1)
        lay.addWidget(self.slice)
        lay.addLayout(bottom)
        self.resize(720, 720)

    # ------------------------------------------------------------------ actions
    def set_tool(self, name: str) -> None:
        self.tool = name
        self.tool_btns[name].setChecked(True)

    def set_slice(self, k: int) -> None:
        # a slice change (PgUp/PgDn, slider) ends a drag: one undo step holds one slice, and the
        # held button must not go on painting the next slice
        self.canvas._stroke = False
        self.edit.end_stroke()
        self.k = int(min(max(k, 0), self.edit.array.shape[0] - 1))
        self.canvas.refresh()
        self._update()

    def apply_at(self, j: float, i: float, new_stroke: bool = True) -> None:
        v = int(self.label_box.currentData() or 1)
        r = self.size.value()
        if self.tool == "brush":
            self.edit.brush(self.k, j, i, r, v, new_stroke)
        elif self.tool == "eraser":
            self.edit.erase(self.k, j, i, r, new_stroke)
        elif new_stroke:
            self.edit.fill(self.k, int(round(j)), int(round(i)), v)
        self.canvas.refresh()
        self._update()

    def undo(self) -> None:
        if self.edit.undo():
            self.canvas.refresh()
        self._update()

    def redo(self) -> None:
        if self.edit.redo():
            self.canvas.refresh()
        self._update()

    def _update(self) -> None:
        self.undo_btn.setEnabled(self.edit.can_undo)
        self.redo_btn.setEnabled(self.edit.can_redo)
        n = self.edit.array.shape[0]
        where = f"slice {self.k + 1}/{n} · " if n > 1 else ""
        self.info.setText(f"{where}{self.edit.changed:,} pixels changed")
        self.save_btn.setEnabled(self.run_id is not None and self.edit.changed > 0)
        if self.run_id is None:
            self.save_btn.setToolTip("this run is not in the prediction log: nothing to link the correction to")

    def save(self) -> dict | None:
        from imaging_assist.errors import UserError
        from imaging_assist.monitoring.feedback import save_correction

        try:
            self.result = save_correction(self.run_id, self.edit.array, self.labels, predicted=self.predicted,
                                          volume=self.volume, expect=self.run_ref)
        except (UserError, ValueError, OSError) as e:
            QMessageBox.warning(self, "Correction not saved", str(e).splitlines()[0])
            return None
        self.saved.emit(self.result)
        self.accept()
        return self.result
