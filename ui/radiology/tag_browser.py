"""DICOM tag browser for the image on screen, with a search field."""

from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import (QHeaderView, QLabel, QLineEdit, QTreeWidget, QTreeWidgetItem,
                               QVBoxLayout, QWidget)

from ..shared.theme import MUTED

MAX_VALUE_CHARS = 160
MAX_ITEMS_PER_SEQ = 50


def _value_text(elem) -> str:
    vr = elem.VR
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") or elem.tag == 0x7FE00010:
        try:
            n = len(elem.value) if elem.value is not None else 0
        except TypeError:
            n = 0
        return f"<{n} bytes>"
    try:
        v = elem.repval if vr == "SQ" else str(elem.value)
    except Exception:  # noqa: BLE001 - undecodable values are shown as such
        return "<cannot decode>"
    if isinstance(elem.value, (list, tuple)) or type(elem.value).__name__ == "MultiValue":
        v = "\\".join(str(x) for x in elem.value)
    v = v.replace("\r", " ").replace("\n", " ")
    return v if len(v) <= MAX_VALUE_CHARS else v[:MAX_VALUE_CHARS] + "…"


class TagBrowser(QWidget):
    """Call :meth:`show_record` with an InstanceRecord; reading happens lazily, once per file."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search tag, keyword or value (e.g. 0028,0030 or Spacing)")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self._filter_later)
        self.title = QLabel("No image")
        self.title.setObjectName("SectionTitle")
        self.title.setWordWrap(True)
        self.tree = QTreeWidget()
        self.tree.setColumnCount(4)
        self.tree.setHeaderLabels(["Tag", "Name", "Value", "VR"])
        self.tree.setUniformRowHeights(True)
        self.tree.setIndentation(14)
        hdr = self.tree.header()
        hdr.setStretchLastSection(False)
        hdr.setSectionResizeMode(0, QHeaderView.ResizeToContents)
        hdr.setSectionResizeMode(1, QHeaderView.Interactive)
        hdr.setSectionResizeMode(2, QHeaderView.Stretch)
        hdr.setSectionResizeMode(3, QHeaderView.ResizeToContents)
        self.tree.setColumnWidth(1, 170)
        mono = QFont("DejaVu Sans Mono")
        mono.setPointSizeF(9.5)
        self._mono = mono
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 4, 6, 6)
        lay.addWidget(self.title)
        lay.addWidget(self.search)
        lay.addWidget(self.tree, 1)
        self._filter_timer = QTimer(self)
        self._filter_timer.setSingleShot(True)
        self._filter_timer.setInterval(150)
        self._filter_timer.timeout.connect(self.apply_filter)
        self._key = None
        self._cache: dict = {}

    # ------------------------------------------------------------------ content
    def show_record(self, rec, caption: str = "") -> None:
        if rec is None:
            self._key = None
            self.tree.clear()
            self.title.setText("No image")
            return
        key = rec.display_path
        if key == self._key:
            self.title.setText(caption or key)
            return
        self._key = key
        ds = self._cache.get(key)
        if ds is None:
            try:
                from imaging_assist.dicom import read_dataset
                ds = read_dataset(rec, stop_before_pixels=True)
            except Exception as e:  # noqa: BLE001
                self.tree.clear()
                self.title.setText(f"{key}: cannot read header ({e})")
                return
            if len(self._cache) > 16:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = ds
        self.title.setText(caption or key)
        self.title.setToolTip(key)
        self.set_dataset(ds)

    def set_dataset(self, ds) -> None:
        self.tree.setUpdatesEnabled(False)
        self.tree.clear()
        meta = getattr(ds, "file_meta", None)
        if meta is not None and len(meta):
            self._add_elements(None, meta)
        self._add_elements(None, ds)
        self.tree.setUpdatesEnabled(True)
        self.apply_filter()

    def _add_elements(self, parent, ds, depth=0):
        for elem in ds:
            tag = f"{elem.tag.group:04X},{elem.tag.element:04X}"
            name = elem.keyword or elem.name
            it = QTreeWidgetItem([tag, name, _value_text(elem), elem.VR])
            it.setFont(0, self._mono)
            it.setToolTip(2, _value_text(elem))
            it.setToolTip(1, f"{elem.name} ({elem.VR})")
            if elem.tag.is_private:
                for c in range(4):
                    it.setForeground(c, QBrush(QColor(MUTED)))
            if parent is None:
                self.tree.addTopLevelItem(it)
            else:
                parent.addChild(it)
            if elem.VR == "SQ" and depth < 6:
                it.setText(2, f"{len(elem.value)} item(s)")
                for n, item in enumerate(elem.value):
                    if n >= MAX_ITEMS_PER_SEQ:
                        it.addChild(QTreeWidgetItem(["", f"… {len(elem.value) - n} more items", "", ""]))
                        break
                    ii = QTreeWidgetItem(["", f"Item {n + 1}", "", ""])
                    it.addChild(ii)
                    self._add_elements(ii, item, depth + 1)

    # ------------------------------------------------------------------ search
    def _filter_later(self):
        self._filter_timer.start()

    def apply_filter(self) -> int:
        """Hide rows not matching the search text (parents of matches stay). Returns matches."""
        q = self.search.text().strip().lower().replace("(", "").replace(")", "")
        qn = q.replace(",", "").replace(" ", "")
        count = 0

        def visit(it) -> bool:
            nonlocal count
            text = " ".join(it.text(c) for c in range(4)).lower()
            tag = it.text(0).replace(",", "").lower()
            me = not q or q in text or (qn and qn == tag) or (qn and len(qn) >= 4 and tag.startswith(qn))
            child_match = False
            for c in range(it.childCount()):
                child_match |= visit(it.child(c))
            show = me or child_match
            it.setHidden(not show)
            if q and child_match:
                it.setExpanded(True)
            if me and q:
                count += 1
            return show

        for i in range(self.tree.topLevelItemCount()):
            visit(self.tree.topLevelItem(i))
        return count

    def visible_rows(self) -> list[tuple[str, str, str]]:
        out = []

        def walk(it):
            if it.isHidden():
                return
            out.append((it.text(0), it.text(1), it.text(2)))
            for c in range(it.childCount()):
                walk(it.child(c))

        for i in range(self.tree.topLevelItemCount()):
            walk(self.tree.topLevelItem(i))
        return out
