"""Measurement list: every ruler, ROI, angle, arrow and note of the open series; select, jump,
delete, undo/redo (through the document's AnnotationController: every change is undoable and saved)."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import (QApplication, QHBoxLayout, QHeaderView, QLabel, QPushButton,
                               QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from imaging_assist.measure import Measurement

from .annotation_tools import annotations_for
from .document import ViewerDocument

KIND_NAMES = {"ruler": "Ruler", "ellipse": "Ellipse", "rectangle": "Rectangle", "angle": "Angle",
              "polygon": "Polygon", "freehand": "Freehand", "arrow": "Arrow", "text": "Text"}
ROLE = Qt.UserRole + 1


class MeasurementsPanel(QWidget):
    jumpTo = Signal(object)  # Measurement

    def __init__(self, doc: ViewerDocument, parent=None):
        super().__init__(parent)
        self.doc = doc
        self._updating = False
        self.tree = QTreeWidget()
        self.tree.setColumnCount(3)
        self.tree.setHeaderLabels(["Measurement", "Value", "Where"])
        self.tree.setRootIsDecorated(False)
        hdr = self.tree.header()
        hdr.setStretchLastSection(False)
        hdr.setSectionResizeMode(0, QHeaderView.ResizeToContents)
        hdr.setSectionResizeMode(1, QHeaderView.Stretch)
        hdr.setSectionResizeMode(2, QHeaderView.ResizeToContents)
        hdr.setMinimumSectionSize(40)
        self.tree.setWordWrap(True)
        # a narrow dock elides in the middle: the number and the end of its spacing source stay
        # visible (the tooltip has the whole line)
        self.tree.setTextElideMode(Qt.ElideMiddle)
        self.tree.currentItemChanged.connect(self._current_changed)
        self.tree.itemDoubleClicked.connect(lambda it, c: self.jumpTo.emit(it.data(0, ROLE)))
        self.empty = QLabel("No measurements. Tools: ruler M, ellipse E, rectangle B, angle A. "
                            "Esc returns to navigation; Del deletes the selected measurement.")
        # the other tools in a tooltip: a longer label changes the dock's size when it hides
        self.empty.setToolTip("Also: polygon G (double-click, Enter or its first point closes it), freehand D, "
                              "arrow Shift+A, text Shift+T (double-click a note to edit it). Ctrl+Z / Ctrl+Y undo "
                              "and redo. Measurements are saved with the study.")
        self.empty.setObjectName("SectionTitle")
        self.empty.setWordWrap(True)
        self.delete_btn = QPushButton("Delete")
        self.delete_btn.clicked.connect(self.delete_selected)
        self.clear_btn = QPushButton("Clear all")
        self.clear_btn.clicked.connect(lambda: annotations_for(doc).clear())
        self.copy_btn = QPushButton("Copy")
        self.copy_btn.setToolTip("Copy all measurements as tab-separated text")
        self.copy_btn.clicked.connect(self.copy_all)
        row = QHBoxLayout()
        row.addWidget(self.copy_btn)
        row.addStretch(1)
        row.addWidget(self.delete_btn)
        row.addWidget(self.clear_btn)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 4, 6, 6)
        lay.addWidget(self.empty)
        lay.addWidget(self.tree, 1)
        lay.addLayout(row)
        doc.measurementsChanged.connect(self.rebuild)
        doc.selectionChanged.connect(self._sync_selection)
        doc.volumeChanged.connect(self.rebuild)
        self.rebuild()

    def _where(self, m: Measurement) -> str:
        plane = self.doc.plane_for_axis(m.axis)
        name = plane.name.capitalize() if m.axis else "Im"
        return f"{name} {m.index + 1}"

    def rebuild(self):
        self._updating = True
        self.tree.clear()
        for n, m in enumerate(self.doc.measurements, 1):
            it = QTreeWidgetItem([f"{n}. {KIND_NAMES[m.kind]}", m.summary(), self._where(m)])
            it.setData(0, ROLE, m)
            it.setToolTip(1, "\n".join(m.result.get("display_text") or m.result.get("text", [])))
            self.tree.addTopLevelItem(it)
            if m is self.doc.selected:
                self.tree.setCurrentItem(it)
        has = bool(self.doc.measurements)
        self.empty.setVisible(not has)
        self.delete_btn.setEnabled(has)
        self.clear_btn.setEnabled(has)
        self.copy_btn.setEnabled(has)
        self._updating = False

    def _sync_selection(self):
        self._updating = True
        for i in range(self.tree.topLevelItemCount()):
            it = self.tree.topLevelItem(i)
            if it.data(0, ROLE) is self.doc.selected:
                self.tree.setCurrentItem(it)
                break
        else:
            self.tree.clearSelection()
        self._updating = False

    def _current_changed(self, cur, prev):
        if self._updating or cur is None:
            return
        m = cur.data(0, ROLE)
        self.doc.select(m)
        self.jumpTo.emit(m)

    def delete_selected(self):
        if self.doc.selected is not None:
            annotations_for(self.doc).remove(self.doc.selected)

    def rows(self) -> list[tuple[str, str, str]]:
        out = []
        for i in range(self.tree.topLevelItemCount()):
            it = self.tree.topLevelItem(i)
            out.append((it.text(0), it.text(1), it.text(2)))
        return out

    def copy_all(self):
        lines = ["#\tkind\tslice\tvalue"]
        for n, m in enumerate(self.doc.measurements, 1):
            lines.append(f"{n}\t{m.kind}\t{self._where(m)}\t{' | '.join(m.result.get('text', []))}")
        QApplication.clipboard().setText("\n".join(lines))

    def keyPressEvent(self, ev):
        if ev.matches(QKeySequence.Delete) or ev.key() == Qt.Key_Backspace:
            self.delete_selected()
            return
        super().keyPressEvent(ev)
