"""DICOM tag browser for the image on screen, with a search field."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import (QHeaderView, QLabel, QLineEdit, QTreeWidget, QTreeWidgetItem,
                               QVBoxLayout, QWidget)

from ..shared.text import plain_tip
from ..shared.theme import MUTED

MAX_VALUE_CHARS = 160  # in the Value column; the tooltip and the search see up to MAX_FULL_CHARS
MAX_FULL_CHARS = 64 * 1024
MAX_ITEMS_PER_SEQ = 50  # the per-frame item of the frame on screen is shown besides these
MAX_DEPTH = 6  # sequences nested deeper are built when their row is expanded
PER_FRAME_GROUPS = 0x52009230  # PerFrameFunctionalGroupsSequence
FULL_VALUE = Qt.UserRole  # (column 2) the value past MAX_VALUE_CHARS, for the search
DEFERRED = Qt.UserRole + 1  # (column 0) a sequence whose items are built on expanding


def _value_text(elem, limit: int = MAX_VALUE_CHARS) -> str:
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
    return v if len(v) <= limit else v[:limit] + "…"


def _tooltip(v: str, width: int = 100) -> str:
    """A long value in lines (a tooltip does not wrap plain text), shown literally (a value
    holding markup is not rendered as HTML)."""
    return plain_tip("\n".join(v[i:i + width] for i in range(0, len(v), width)))


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
        self.title.setTextFormat(Qt.PlainText)  # a file name or a read error: never markup
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
        self.tree.itemExpanded.connect(self._expanded)
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
        self._per_frame = None  # (row, sequence) of the PerFrameFunctionalGroupsSequence shown
        self._frame_row = None  # (row, added) of the frame on screen, added past the first items

    # ------------------------------------------------------------------ content
    def clear_cache(self) -> None:
        """Forget the headers read (a folder is opened: its files may have been rewritten)."""
        self._cache.clear()
        self._key = None

    def show_record(self, rec, caption: str = "", frame: int | None = None) -> None:
        """``frame``: the file's frame on screen (0-based) in a multi-frame file; its per-frame
        functional groups item is labelled and expanded."""
        if rec is None:
            self._key = None
            self.tree.clear()
            self._per_frame = self._frame_row = None
            self.title.setText("No image")
            return
        path = rec.display_path
        # a file rewritten since it was read (and its folder scanned again) has another identity
        key = (rec.path, rec.member, rec.file_identity, rec.member_crc, rec.file_size)
        ds = self._cache.get(key)
        if ds is None:
            try:
                from imaging_assist.dicom import read_dataset
                ds = read_dataset(rec, stop_before_pixels=True)
            except Exception as e:  # noqa: BLE001
                self._key = None
                self.tree.clear()
                self._per_frame = self._frame_row = None
                self.title.setText(f"{path}: cannot read header ({e})")
                return
            if len(self._cache) > 16:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = ds
        self.title.setText(caption or path)
        self.title.setToolTip(plain_tip(path))
        if key != self._key:
            self._key = key
            self.set_dataset(ds, frame)
        else:  # another frame of the same file: only its per-frame item changes
            self.show_frame(frame)

    def set_dataset(self, ds, frame: int | None = None) -> None:
        self.tree.setUpdatesEnabled(False)
        self.tree.clear()
        self._per_frame = self._frame_row = None
        meta = getattr(ds, "file_meta", None)
        if meta is not None and len(meta):
            # read_dataset adds a TransferSyntaxUID to a file without one (from the scan)
            inferred = {0x00020010} if getattr(ds, "inferred_transfer_syntax", False) else set()
            self._add_elements(None, meta, inferred=inferred)
        self._add_elements(None, ds)
        self.show_frame(frame, refilter=False)
        self.tree.setUpdatesEnabled(True)
        self.apply_filter()

    def show_frame(self, frame: int | None, refilter: bool = True) -> None:
        """Label and expand the per-frame functional groups item of ``frame`` (0-based); one
        past the first MAX_ITEMS_PER_SEQ items is added after them."""
        if self._frame_row is not None:
            row, added = self._frame_row
            self._frame_row = None
            if added:
                row.parent().removeChild(row)
            else:
                row.setText(1, row.text(1).replace(" (frame on screen)", ""))
                row.setFont(1, self.tree.font())
                row.setExpanded(False)
        if self._per_frame is None or frame is None or not 0 <= frame < len(self._per_frame[1]):
            return
        pf, seq = self._per_frame
        added = frame >= MAX_ITEMS_PER_SEQ
        if added:
            row = QTreeWidgetItem(["", "", "", ""])
            pf.addChild(row)
            self._add_elements(row, seq[frame], 1)
        else:
            row = pf.child(frame)
        row.setText(1, f"Item {frame + 1} (frame on screen)")
        bold = QFont(self.tree.font())
        bold.setBold(True)
        row.setFont(1, bold)
        pf.setExpanded(True)
        row.setExpanded(True)
        self._frame_row = (row, added)
        if refilter and self.search.text().strip():
            self.apply_filter()

    def _add_elements(self, parent, ds, depth=0, inferred=frozenset()):
        for elem in ds:
            tag = f"{elem.tag.group:04X},{elem.tag.element:04X}"
            name = elem.keyword or elem.name
            full = _value_text(elem, MAX_FULL_CHARS)
            if elem.tag in inferred:
                full += " (inferred, not in the file)"
            short = full if len(full) <= MAX_VALUE_CHARS else full[:MAX_VALUE_CHARS] + "…"
            it = QTreeWidgetItem([tag, name, short, elem.VR])
            it.setFont(0, self._mono)
            it.setToolTip(2, _tooltip(full))
            if short != full:
                it.setData(2, FULL_VALUE, full)
            it.setToolTip(1, plain_tip(f"{elem.name} ({elem.VR})"))
            if elem.tag.is_private or elem.tag in inferred:
                for c in range(4):
                    it.setForeground(c, QBrush(QColor(MUTED)))
            if parent is None:
                self.tree.addTopLevelItem(it)
                if elem.tag == PER_FRAME_GROUPS and elem.VR == "SQ":
                    self._per_frame = (it, elem.value)
            else:
                parent.addChild(it)
            if elem.VR == "SQ":
                self._add_items(it, elem.value, depth)

    def _add_items(self, it, seq, depth):
        it.setText(2, f"{len(seq)} item(s)")
        if depth >= MAX_DEPTH and len(seq):
            # deeper levels are built when the row is expanded: rows grow with every level
            it.setData(0, DEFERRED, seq)
            it.addChild(QTreeWidgetItem(["", "deeper levels not shown: expand to show", "", ""]))
            return
        for n, item in enumerate(seq):
            if n >= MAX_ITEMS_PER_SEQ:
                it.addChild(QTreeWidgetItem(["", f"… {len(seq) - n} more items", "", ""]))
                break
            ii = QTreeWidgetItem(["", f"Item {n + 1}", "", ""])
            it.addChild(ii)
            self._add_elements(ii, item, depth + 1)

    def _build_deferred(self, it) -> bool:
        """Build the items of a sequence cut at MAX_DEPTH; False when there is none."""
        seq = it.data(0, DEFERRED)
        if seq is None:
            return False
        it.setData(0, DEFERRED, None)
        it.takeChildren()
        self._add_items(it, seq, 0)
        return True

    def _expanded(self, it) -> None:
        if self._build_deferred(it) and self.search.text().strip():
            self._filter_later()  # later: apply_filter itself expands rows

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
            full = it.data(2, FULL_VALUE)
            if full:
                text += " " + full.lower()
            if q:
                self._build_deferred(it)  # the search looks below MAX_DEPTH too
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
