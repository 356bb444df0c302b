"""Layer panel: toggle and tune overlay layers (label maps, heat maps, markers)."""

from __future__ import annotations

import math

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import (QColorDialog, QComboBox, QFormLayout, QHBoxLayout,
                               QLabel, QPushButton, QSlider, QTreeWidget, QTreeWidgetItem,
                               QVBoxLayout, QWidget)

from imaging_assist.layers import (COLORMAPS, HEAT_MODES, HeatmapLayer, LabelLayer, LayerStack, MarkerLayer,
                                   ShapesLayer)

from ..shared.spinbox import DecimalSpinBox
from ..shared.text import plain_tip
from ..shared.theme import WARN_FG

LAYER_ROLE = Qt.UserRole + 1
CHILD_ROLE = Qt.UserRole + 2
KIND_TEXT = {"label": "labels", "heatmap": "heat map", "markers": "markers", "shapes": "graphics"}


def swatch(rgb) -> QIcon:
    pm = QPixmap(14, 14)
    pm.fill(QColor(*rgb))
    return QIcon(pm)


def flag_reasons(layer) -> list[str]:
    """Why a heat map is flagged: the engine's reasons (``HeatmapLayer.flags``), or the nodule
    dock's one-line ``flag``."""
    reasons = list(getattr(layer, "flags", None) or [])
    extra = getattr(layer, "flag", None)
    if isinstance(extra, str) and extra and extra not in reasons:
        reasons.append(extra)
    return reasons


class LayersPanel(QWidget):
    """Shows a :class:`LayerStack`; ``jumpTo(k, j, i)`` when a marker is activated."""

    jumpTo = Signal(object)

    def __init__(self, stack: LayerStack, parent=None):
        super().__init__(parent)
        self.stack = stack
        self._updating = False
        self.tree = QTreeWidget()
        self.tree.setColumnCount(1)
        self.tree.setHeaderHidden(True)
        self.tree.setIndentation(16)
        self.tree.itemChanged.connect(self._item_changed)
        self.tree.currentItemChanged.connect(lambda *_: self._show_props())
        self.tree.itemDoubleClicked.connect(self._double_clicked)
        self.empty = QLabel("No overlays. Segmentations, heat maps and findings from a model "
                            "appear here; Overlays ▸ Threshold segmentation makes one from HU values.")
        self.empty.setObjectName("SectionTitle")
        self.empty.setWordWrap(True)

        # properties of the selected layer
        self.props = QWidget()
        form = QFormLayout(self.props)
        form.setContentsMargins(2, 4, 2, 2)
        self.opacity = QSlider(Qt.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.valueChanged.connect(self._set_opacity)
        self.opacity_label = QLabel("50 %")
        orow = QHBoxLayout()
        orow.addWidget(self.opacity)
        orow.addWidget(self.opacity_label)
        form.addRow("Opacity", orow)
        self.mode = QComboBox()
        self.mode.addItems(["fill", "outline"])
        self.mode.currentTextChanged.connect(self._set_mode)
        form.addRow("Draw as", self.mode)
        self.cmap = QComboBox()
        self.cmap.addItems(list(COLORMAPS))
        self.cmap.currentTextChanged.connect(self._set_cmap)
        form.addRow("Colormap", self.cmap)
        self.threshold = DecimalSpinBox()  # "0.75" is 0.75 under every LANG
        self.threshold.setDecimals(3)
        self.threshold.setKeyboardTracking(False)
        self.threshold.valueChanged.connect(self._set_threshold)
        form.addRow("Threshold", self.threshold)
        self.min_score = DecimalSpinBox()
        self.min_score.setRange(0, 1)
        self.min_score.setSingleStep(0.05)
        self.min_score.setDecimals(2)
        self.min_score.valueChanged.connect(self._set_min_score)
        form.addRow("Min. score", self.min_score)
        self._form = form
        btns = QHBoxLayout()
        self.up = QPushButton("▲")
        self.down = QPushButton("▼")
        self.remove = QPushButton("Remove")
        for b in (self.up, self.down):
            b.setFixedWidth(36)
        self.up.setToolTip("Draw this layer above the next one")
        self.down.setToolTip("Draw this layer below the previous one")
        self.up.clicked.connect(lambda: self._move(+1))
        self.down.clicked.connect(lambda: self._move(-1))
        self.remove.clicked.connect(self._remove)
        btns.addWidget(self.up)
        btns.addWidget(self.down)
        btns.addStretch(1)
        btns.addWidget(self.remove)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 4, 6, 6)
        lay.addWidget(self.empty)
        lay.addWidget(self.tree, 1)
        lay.addWidget(self.props)
        lay.addLayout(btns)
        self._btns = [self.up, self.down, self.remove]
        stack.subscribe(self._on_stack)
        self.rebuild()

    # ------------------------------------------------------------------ model -> view
    def _on_stack(self, event, layer):
        if self._updating:
            return
        if event == "changed":
            self._refresh_states()
        else:
            self.rebuild()

    def rebuild(self):
        self._updating = True
        cur = self.current_layer()
        self.tree.clear()
        for layer in reversed(self.stack.layers):  # top layer first, as in image editors
            it = QTreeWidgetItem([self._item_text(layer)])
            it.setData(0, LAYER_ROLE, layer)
            it.setFlags(it.flags() | Qt.ItemIsUserCheckable)
            it.setCheckState(0, Qt.Checked if layer.visible else Qt.Unchecked)
            if isinstance(layer, LabelLayer):
                for v, info in sorted(layer.labels.items()):
                    ch = QTreeWidgetItem([info.name])
                    ch.setData(0, CHILD_ROLE, info)
                    ch.setFlags(ch.flags() | Qt.ItemIsUserCheckable)
                    ch.setCheckState(0, Qt.Checked if info.visible else Qt.Unchecked)
                    ch.setIcon(0, swatch(info.color))
                    ch.setToolTip(0, plain_tip(f"{info.name} (value {v}). Double-click to change the colour"))
                    it.addChild(ch)
            elif isinstance(layer, HeatmapLayer):
                tip = f"range {layer.vmin:.3g} … {layer.vmax:.3g} {layer.units}".strip()
                note = layer.constant_note()
                if note:  # not the made-up range of a single value ("0.8 … 1.8")
                    tip = note
                    ch = QTreeWidgetItem([note])
                    ch.setForeground(0, QColor("#8b9099"))
                    it.addChild(ch)
                for why in flag_reasons(layer):  # issue 17: why the map is hidden
                    ch = QTreeWidgetItem([f"⚑ {why}"])
                    ch.setForeground(0, QColor(WARN_FG))
                    ch.setToolTip(0, plain_tip(f"{why}. Tick the map to show it anyway."))
                    it.addChild(ch)
                    tip += f"\n⚑ {why}"
                it.setToolTip(0, plain_tip(tip))
            elif isinstance(layer, MarkerLayer):
                for m in layer.markers:
                    # slide markers are named by class and tile already; an image number only
                    # means something on a stack of images
                    where = ("" if getattr(layer, "origin", None) is not None
                             else f"   (image {int(round(m.position[0])) + 1})")
                    ch = QTreeWidgetItem([f"{m.text() or 'marker'}{where}"])
                    ch.setData(0, CHILD_ROLE, m)
                    ch.setIcon(0, swatch(m.color))
                    ch.setToolTip(0, "Double-click to go to this finding")
                    it.addChild(ch)
            elif isinstance(layer, ShapesLayer):
                for sh in layer.shapes:
                    k = int(round(sh.position[0]))
                    ch = QTreeWidgetItem([f"{sh.text() or 'region'}   (image {k + 1})"])
                    ch.setData(0, CHILD_ROLE, sh)
                    ch.setFlags(ch.flags() | Qt.ItemIsUserCheckable)
                    ch.setCheckState(0, Qt.Checked if sh.visible else Qt.Unchecked)
                    ch.setIcon(0, swatch(sh.color))
                    ch.setToolTip(0, plain_tip("\n".join(sh.label + ["Double-click to go to it"])))
                    it.addChild(ch)
            sources = getattr(layer, "sources", None)
            if sources and len(sources) > 1:  # one layer per structure (ui/radiology/series_results.py)
                it.setToolTip(0, plain_tip("from " + ", ".join(sources)))
                ch = QTreeWidgetItem(["from " + ", ".join(sources)])
                ch.setForeground(0, QColor("#8b9099"))
                it.addChild(ch)
            self.tree.addTopLevelItem(it)
            it.setExpanded(True)
            if layer is cur:
                self.tree.setCurrentItem(it)
        if self.tree.currentItem() is None and self.tree.topLevelItemCount():
            self.tree.setCurrentItem(self.tree.topLevelItem(0))
        has = len(self.stack) > 0
        self.empty.setVisible(not has)
        self.tree.setVisible(has)
        self._updating = False
        self._show_props()

    def _item_text(self, layer) -> str:
        kind = KIND_TEXT.get(layer.kind, layer.kind)
        if flag_reasons(layer):  # the mark first: the dock is narrow and long names are cut
            return f"⚑ {layer.name}   ({kind}, flagged" + ("" if layer.visible else ", hidden") + ")"
        return f"{layer.name}   ({kind})"

    def _refresh_states(self):
        self._updating = True
        for i in range(self.tree.topLevelItemCount()):
            it = self.tree.topLevelItem(i)
            layer = it.data(0, LAYER_ROLE)
            it.setCheckState(0, Qt.Checked if layer.visible else Qt.Unchecked)
            it.setText(0, self._item_text(layer))
            for c in range(it.childCount()):
                ch = it.child(c)
                obj = ch.data(0, CHILD_ROLE)
                if hasattr(obj, "visible"):
                    ch.setCheckState(0, Qt.Checked if obj.visible else Qt.Unchecked)
                if hasattr(obj, "color"):
                    ch.setIcon(0, swatch(obj.color))
        self._updating = False
        self._show_props()

    def current_layer(self):
        it = self.tree.currentItem()
        if it is None:
            return None
        while it.parent() is not None:
            it = it.parent()
        return it.data(0, LAYER_ROLE)

    def _show_props(self):
        layer = self.current_layer()
        self.props.setVisible(layer is not None)
        for b in self._btns:
            b.setEnabled(layer is not None)
        if layer is None:
            return
        was = self._updating
        self._updating = True
        self.opacity.setValue(int(round(layer.opacity * 100)))
        self.opacity_label.setText(f"{int(round(layer.opacity * 100))} %")
        is_label, is_heat, is_mark = (isinstance(layer, c) for c in (LabelLayer, HeatmapLayer, MarkerLayer))
        for row, show in enumerate((not is_mark, is_label or is_heat, is_heat, is_heat, is_mark)):
            self._form.setRowVisible(row, show)
        modes = ["fill", "outline"] if is_label else list(HEAT_MODES) if is_heat else []
        if [self.mode.itemText(i) for i in range(self.mode.count())] != modes:
            self.mode.clear()
            self.mode.addItems(modes)
        if is_label or is_heat:
            self.mode.setCurrentText(layer.mode)
        if is_heat:
            self.cmap.setCurrentText(layer.colormap)
            lo, hi = layer.data_range
            span = (hi - lo) or 1.0
            # enough decimals that a step (span / 50) and a typed value change the threshold of
            # a map with small values (raw saliency ~1e-3); set before the range and the value,
            # which the box rounds to its decimals
            self.threshold.setDecimals(min(12, max(3, math.ceil(-math.log10(span / 1000)))))
            self.threshold.setRange(lo - span, hi + span)
            self.threshold.setSingleStep(span / 50)
            self.threshold.setValue(layer.threshold)
        if is_mark:
            self.min_score.setValue(layer.min_score or 0.0)
        self._updating = was

    # ------------------------------------------------------------------ view -> model
    def _item_changed(self, item, col):
        if self._updating or col != 0:
            return
        on = item.checkState(0) == Qt.Checked
        self._updating = True
        try:
            layer = item.data(0, LAYER_ROLE)
            if layer is not None:
                layer.visible = on
                # the "changed" event is ignored while _updating: "flagged, hidden" -> "flagged"
                item.setText(0, self._item_text(layer))
            else:
                obj = item.data(0, CHILD_ROLE)
                if obj is not None and hasattr(obj, "visible"):
                    obj.visible = on
        finally:
            self._updating = False

    def _double_clicked(self, item, col):
        obj = item.data(0, CHILD_ROLE)
        if obj is None:
            return
        if hasattr(obj, "position"):
            self.jumpTo.emit(obj.position)
            return
        if hasattr(obj, "color"):
            c = QColorDialog.getColor(QColor(*obj.color), self, f"Colour of {obj.name}")
            if c.isValid():
                obj.color = (c.red(), c.green(), c.blue())

    def _set_opacity(self, v):
        self.opacity_label.setText(f"{v} %")
        layer = self.current_layer()
        if layer is not None and not self._updating:
            layer.opacity = v / 100.0

    def _set_mode(self, mode):
        layer = self.current_layer()
        if self._updating or not mode:
            return
        if isinstance(layer, LabelLayer) and mode in ("fill", "outline"):
            layer.mode = mode
        elif isinstance(layer, HeatmapLayer) and mode in HEAT_MODES:
            layer.mode = mode

    def _set_cmap(self, name):
        layer = self.current_layer()
        if isinstance(layer, HeatmapLayer) and not self._updating:
            layer.colormap = name

    def _set_threshold(self, v):
        layer = self.current_layer()
        if isinstance(layer, HeatmapLayer) and not self._updating:
            layer.threshold = float(v)

    def _set_min_score(self, v):
        layer = self.current_layer()
        if isinstance(layer, MarkerLayer) and not self._updating:
            layer.min_score = float(v) if v > 0 else None

    def _move(self, d):
        layer = self.current_layer()
        if layer is not None:
            self.stack.move(layer, self.stack.index_of(layer) + d)

    def _remove(self):
        layer = self.current_layer()
        if layer is not None:
            self.stack.remove(layer)
