"""Overlay dialogs of the main window: threshold segmentation and loading an overlay file."""

from __future__ import annotations

import os

import numpy as np
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QLineEdit,
                               QMessageBox)

from imaging_assist.layers import LabelLayer

from ..shared.spinbox import DecimalSpinBox
from ..shared.text import plain_tip


def threshold_dialog(self):
    """Overlays ▸ Threshold segmentation: a label layer from a value range (HU for CT)."""
    vol = self.doc.volume
    if vol is None or vol.is_color:
        return
    dlg = QDialog(self)
    dlg.setWindowTitle("Threshold segmentation")
    form = QFormLayout(dlg)
    lo_v, hi_v = vol.value_range()
    lo = DecimalSpinBox()  # "." or "," as the decimal point under every LANG
    hi = DecimalSpinBox()
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
    """Overlays ▸ Load overlay from file (.npy / NIfTI on the volume's grid)."""
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
        if layer.warnings:  # e.g. a plain image's NIfTI taken on its pixel grid, its affine unused
            self.show_banner(" · ".join(layer.warnings))
    except ValueError as e:  # the loader's one line names the file
        QMessageBox.warning(self, "Overlay", plain_tip(f"Not loaded: {e}"))
    except Exception as e:  # noqa: BLE001 - not expected: still one line, never a traceback
        QMessageBox.warning(self, "Overlay", plain_tip(f"Not loaded: {os.path.basename(path)}: {type(e).__name__}: {e}"))
