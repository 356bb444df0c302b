"""Study browser: patient / study / series tree with thumbnails, and the problems list."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QGuiApplication, QIcon, QImage, QPainter, QPixmap, QTextCursor
from PySide6.QtWidgets import (QLabel, QSplitter, QTextBrowser, QTreeWidgetItem,
                               QVBoxLayout, QWidget)

from imaging_assist.dicom.header import charset_doubt

from ..shared.text import plain_tip
from ..shared.theme import MUTED, TEXT, WARN_FG

ICON = 64
SERIES_ROLE = Qt.UserRole + 1
TIP_ROLE = Qt.UserRole + 2  # a row's tooltip as plain text (the tooltip itself may be escaped)
IMAGE_KEY = "image:"  # browser key of a plain image (PNG/JPEG/TIFF/BMP): IMAGE_KEY + its path


@dataclass
class SeriesProblem:
    """A problems-list line for a series the scan accepted but that cannot be displayed."""

    path: str
    reason: str
    series_key: str


def _date(d: str) -> str:
    d = str(d or "")
    return f"{d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) == 8 and d.isdigit() else d


def _name(pn: str) -> str:
    return str(pn or "").replace("^", " ").strip() or "(no name)"


def _set_tip(item, text: str) -> None:
    """A row's tooltip: header values and file names shown literally (a PatientName holding
    markup is not rendered as HTML), the plain text kept for :meth:`StudyBrowser.set_unviewable`."""
    item.setData(0, TIP_ROLE, text)
    item.setToolTip(0, plain_tip(text))


def _short(text: str, n: int = 48) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def placeholder_icon(modality: str) -> QIcon:
    pm = QPixmap(ICON, ICON)
    pm.fill(QColor("#101113"))
    p = QPainter(pm)
    p.setPen(QColor("#5d6169"))
    f = QFont()
    f.setPointSize(11)
    f.setBold(True)
    p.setFont(f)
    p.drawText(pm.rect(), Qt.AlignCenter, modality or "?")
    p.end()
    return QIcon(pm)


CANNOT_DISPLAY = "cannot display"


def cannot_display_icon() -> QIcon:
    """The tile of a series that cannot be displayed (its tooltip says why)."""
    pm = QPixmap(ICON, ICON)
    pm.fill(QColor("#2a1414"))
    p = QPainter(pm)
    p.setPen(QColor(WARN_FG))
    f = QFont()
    f.setPointSize(20)
    f.setBold(True)
    p.setFont(f)
    p.drawText(pm.rect().adjusted(0, 0, 0, -ICON // 4), Qt.AlignCenter, "⊘")
    f.setPointSize(7)
    f.setBold(False)
    p.setFont(f)
    p.drawText(pm.rect().adjusted(2, ICON // 2, -2, 0), Qt.AlignCenter | Qt.TextWordWrap, CANNOT_DISPLAY)
    p.end()
    return QIcon(pm)


def icon_from_array(img: np.ndarray, aspect=(1.0, 1.0)) -> QIcon:
    """The series thumbnail: ``img`` fitted into an ICON x ICON (logical) square, its pixel
    ``aspect`` (column, row spacing) kept.  Made in device pixels (ICON x the screen's device
    pixel ratio a side, the pixmap tagged with that ratio): on a ratio-2 screen a 64-pixel
    icon is 128 screen pixels, and a 64-pixel pixmap would be stretched to them."""
    app = QGuiApplication.instance()
    dpr = app.devicePixelRatio() if app is not None else 1.0
    side = round(ICON * dpr)
    img = np.ascontiguousarray(img)
    h, w = img.shape[:2]
    fmt = QImage.Format_RGB888 if img.ndim == 3 else QImage.Format_Grayscale8
    q = QImage(img.data, w, h, img.strides[0], fmt).copy()
    sx, sy = aspect
    ww, hh = w * sx, h * sy
    s = side / max(ww, hh)
    q = q.scaled(max(1, int(ww * s)), max(1, int(hh * s)), Qt.IgnoreAspectRatio, Qt.SmoothTransformation)
    pm = QPixmap(side, side)
    pm.fill(QColor("#000000"))
    p = QPainter(pm)
    p.drawImage((side - q.width()) // 2, (side - q.height()) // 2, q)  # device pixels (ratio set after)
    p.end()
    pm.setDevicePixelRatio(dpr)
    return QIcon(pm)


def _same_id_notes(index) -> dict:
    """Patient entries whose Patient ID another entry uses under another name or birth date (a
    typo, or two patients: the priors match them by ID): ``id(patient)`` -> (the suffix of its
    tree line, the notes for its tooltip).  The same ID from another issuer is another patient."""
    from imaging_assist import viewing

    by_id: dict[str, list] = {}
    for p in index.patients:
        if str(p.id or "").strip():
            by_id.setdefault(str(p.id).strip(), []).append(p)
    who = {id(p): viewing.identity_of([s for st in p.studies for s in st.series], p)
           for group in by_id.values() if len(group) > 1 for p in group}
    out = {}
    for group in by_id.values():
        for p in group if len(group) > 1 else ():
            notes = [viewing.identity_note(who[id(q)], who[id(p)]) for q in group
                     if q is not p and not viewing.other_issuer(who[id(q)], who[id(p)])]
            notes = list(dict.fromkeys(n for n in notes if n))
            if notes:
                other_name = any("different name" in n for n in notes)
                out[id(p)] = ("   ⚠ same ID as another " + ("name" if other_name else "birth date"), notes)
    return out


class StudyBrowser(QWidget):
    """Emits ``seriesChosen(key)`` when a series is clicked or activated."""

    seriesChosen = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.index = None
        self._items: dict[str, QTreeWidgetItem] = {}
        self._tiles: dict[str, str] = {}  # key -> "placeholder" / "thumbnail" / "cannot display"
        self.unviewable: dict[str, str] = {}  # key -> one-line reason the series cannot be displayed
        self.index = None
        from .layouts import SeriesTree
        self.tree = SeriesTree()  # a QTreeWidget whose series can be dragged into a viewport
        self.tree.setColumnCount(1)
        self.tree.setHeaderHidden(True)
        self.tree.setIconSize(QSize(ICON, ICON))
        self.tree.setUniformRowHeights(False)
        self.tree.setAlternatingRowColors(False)
        self.tree.setRootIsDecorated(True)
        self.tree.setIndentation(14)
        self.tree.setWordWrap(True)
        self.tree.itemClicked.connect(self._clicked)
        self.tree.itemActivated.connect(self._clicked)

        self.problems_title = QLabel("")
        self.problems_title.setObjectName("ProblemsTitle")
        self.problems = QTextBrowser()
        self.problems.setOpenLinks(False)
        self.problems.setReadOnly(True)
        self.problem_items: list = []
        pbox = QWidget()
        pl = QVBoxLayout(pbox)
        pl.setContentsMargins(0, 0, 0, 0)
        pl.setSpacing(2)
        pl.addWidget(self.problems_title)
        pl.addWidget(self.problems)

        self.summary = QLabel("No study open")
        self.summary.setObjectName("SectionTitle")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.PlainText)  # the folder's name: never markup
        # files that are plainly not images (licences, readme, reader XML): counted, quiet
        self.other_label = QLabel("")
        self.other_label.setObjectName("OtherFiles")
        self.other_label.setWordWrap(True)
        self.other_label.setTextFormat(Qt.PlainText)  # file names: never markup
        self.other_label.setStyleSheet(f"color: {MUTED}")
        self.other_label.hide()
        self.other_files: list = []
        split = QSplitter(Qt.Vertical)
        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.setSpacing(2)
        tl.addWidget(self.summary)
        tl.addWidget(self.tree)
        tl.addWidget(self.other_label)
        split.addWidget(top)
        split.addWidget(pbox)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        self._split = split
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 0, 6, 6)
        lay.addWidget(split)
        self._pbox = pbox
        pbox.hide()

    # ------------------------------------------------------------------ content
    def set_index(self, index) -> None:
        self.index = index
        self.tree.clear()
        self._items.clear()
        self._tiles = {}
        self.unviewable = {}
        bold = QFont(self.tree.font())
        bold.setBold(True)
        n_series = 0
        same_id = _same_id_notes(index)
        for pat in index.patients:
            extra = ", ".join(x for x in (f"ID {pat.id}" if pat.id else "", pat.sex,
                                          f"born {_date(pat.birth_date)}" if pat.birth_date else "") if x)
            mark, notes = same_id.get(id(pat), ("", []))
            # a name read in an undeclared or unknown character set, or with undecodable bytes,
            # is marked beside it (the note in the tooltip): never mojibake shown as a name
            doubt = [d for d in (charset_doubt(r) for st in pat.studies for ser in st.series
                                 for r in ser.instances) if d][:1]
            name = _name(pat.name) + (" ⚠ charset" if doubt else "")
            pi = QTreeWidgetItem([name + (f"   ({extra})" if extra else "") + mark])
            pi.setFont(0, bold)
            _set_tip(pi, f"{name}\n{extra}" + "".join(f"\n⚠ {n}" for n in doubt + notes))
            if mark or doubt:
                pi.setForeground(0, QBrush(QColor(WARN_FG)))
            self.tree.addTopLevelItem(pi)
            for st in pat.studies:
                n_img = sum(s.n_frames for s in st.series)
                text = "  ·  ".join(x for x in (_date(st.date), st.description or "(no study description)") if x)
                si = QTreeWidgetItem([text])
                _set_tip(si, f"Study {st.description}\nDate {_date(st.date)} {st.time}\n"
                                 f"Accession {st.accession or '-'}\n{len(st.series)} series, {n_img} images\n"
                                 f"UID {st.uid}")
                pi.addChild(si)
                for s in st.series:
                    n_series += 1
                    num = f"#{s.number}  " if s.number not in (None, "") else ""
                    size = f"{s.cols}×{s.rows}" if s.rows else ""
                    frames = (f"{s.n_frames} frames" + (f" in {s.n_instances} files" if s.n_instances > 1 else "")) \
                        if s.n_frames != s.n_instances else f"{s.n_instances} image" + ("s" if s.n_instances != 1 else "")
                    line1 = f"{num}{s.modality or '?'}  {s.description or '(no description)'}"
                    line2 = "  ·  ".join(x for x in (frames, size, s.body_part) if x)
                    text = f"{line1}\n{line2}"
                    if s.warnings:
                        text += "\n⚠ " + _short(s.warnings[0])
                    if s.result_kind:
                        from imaging_assist.dicom.result_objects import KIND_NAMES
                        text += (f"\n{KIND_NAMES[s.result_kind]} (document)" if s.result_kind == "PDF"
                                 else f"\n{KIND_NAMES[s.result_kind]} (result; shown over its series)")
                    elif not s.is_image:
                        text += "\n(no images)"
                    it = QTreeWidgetItem([text])
                    it.setData(0, SERIES_ROLE, s.key)
                    it.setIcon(0, placeholder_icon(s.modality))
                    self._tiles[s.key] = "placeholder"
                    tip = [f"Series {s.number}: {s.description}", f"UID {s.uid}",
                           f"{s.modality}  {s.body_part}".strip(), frames, size]
                    tip += [f"⚠ {w}" for w in s.warnings]
                    _set_tip(it, "\n".join(x for x in tip if x))
                    if not s.is_image:
                        it.setForeground(0, QBrush(QColor(MUTED)))
                    elif s.warnings:
                        it.setForeground(0, QBrush(QColor(WARN_FG)))
                    si.addChild(it)
                    self._items[s.key] = it
        from .loading import viewable_images
        images = viewable_images(index)
        if images:  # plain images open as they do in `analyze` (no patient, no geometry)
            gi = QTreeWidgetItem([f"Plain images ({len(images)})"])
            gi.setFont(0, bold)
            gi.setToolTip(0, "PNG / JPEG / TIFF / BMP files without a DICOM header: no patient data, "
                             "no geometry (lengths in pixels)")
            self.tree.addTopLevelItem(gi)
            for path, kind in images:
                key = IMAGE_KEY + path
                it = QTreeWidgetItem([f"{os.path.basename(path)}\n{kind}"])
                it.setData(0, SERIES_ROLE, key)
                it.setIcon(0, placeholder_icon("IMG"))
                _set_tip(it, path)
                self._tiles[key] = "placeholder"
                gi.addChild(it)
                self._items[key] = it
        self.tree.expandAll()
        n_pat = len(index.patients)
        root = index.root
        short = os.path.basename(root.rstrip("/")) or root
        parts = [f"{n_pat} patient{'s' if n_pat != 1 else ''}", f"{n_series} series"] if (n_series or not images) else []
        if images:
            parts.append(f"{len(images)} image{'s' if len(images) != 1 else ''}")
        parts.append(f"{index.n_files} files")
        self.summary.setText("  ·  ".join(parts) + f"\n{short}")
        self.summary.setToolTip(plain_tip(root))
        shown = {p for p, _ in images}
        self.set_other_files([o for o in getattr(index, "other_files", []) if o.path not in shown])
        self.set_problems(index.problems)

    def set_other_files(self, others) -> None:
        """One quiet line: how many files are not images, and of what kind (names in the tooltip)."""
        self.other_files = list(others)
        if not others:
            self.other_label.hide()
            return
        kinds: dict[str, int] = {}
        for o in others:
            kinds[o.reason] = kinds.get(o.reason, 0) + 1
        what = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
        n = len(others)
        if n == 1:
            o = others[0]
            self.other_label.setText(f"1 other file, not an image: {os.path.basename(o.path.split('!')[-1])} ({o.reason})")
        else:
            self.other_label.setText(f"{n} other files, not images: {what}")
        names = [f"{os.path.basename(o.path.split('!')[-1])}  ({o.reason})" for o in others[:40]]
        self.other_label.setToolTip(plain_tip("\n".join(names + ([f"… and {n - 40} more"] if n > 40 else []))))
        self.other_label.show()

    def set_problems(self, problems) -> None:
        self.problem_items = list(problems)
        rows = []
        for pr in problems:
            path = pr.path.rstrip("/")
            name = os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path)) \
                if "!" not in path else path.split("!", 1)[1]
            rows.append(f"<p style='margin:0 0 6px 0'><span style='color:{TEXT}'>{html.escape(name)}</span><br>"
                        f"<span style='color:{WARN_FG}'>{html.escape(pr.reason)}</span></p>")
        self.problems.setHtml("".join(rows))
        self.problems.moveCursor(QTextCursor.Start)
        self.problems.verticalScrollBar().setValue(0)
        n = len(problems)
        self.problems_title.setText(f"⚠ {n} file(s) could not be read" if n else "")
        self._pbox.setVisible(bool(n))
        if n:
            self._split.setSizes([600, min(60 + 48 * n, 300)])

    def clear(self) -> None:
        """No study: no rows, and no keys left pointing at deleted rows (a late tile is ignored)."""
        self.index = None
        self.tree.clear()
        self._items.clear()
        self._tiles = {}
        self.unviewable = {}

    def set_thumbnail(self, key: str, img: np.ndarray, aspect=(1.0, 1.0)) -> None:
        it = self._items.get(key)
        if it is not None and key not in self.unviewable:
            it.setIcon(0, icon_from_array(img, aspect))
            self._tiles[key] = "thumbnail"

    def set_unviewable(self, key: str, reason: str) -> None:
        """The series cannot be displayed: a "cannot display" tile whose tooltip gives the
        one-line reason, and a line in the problems list (its first file and the reason)."""
        it = self._items.get(key)
        if it is None or self.unviewable.get(key) == reason:
            return
        self.unviewable[key] = reason
        it.setIcon(0, cannot_display_icon())
        self._tiles[key] = CANNOT_DISPLAY
        tip = (it.data(0, TIP_ROLE) or "").split("\n⊘ ")[0]
        _set_tip(it, f"{tip}\n⊘ {CANNOT_DISPLAY}: {reason}")
        it.setForeground(0, QBrush(QColor(WARN_FG)))
        s = self.index.find_series(key) if self.index is not None else None
        path = s.instances[0].path if s is not None and s.instances else key.removeprefix(IMAGE_KEY)
        probs = [p for p in self.problem_items if getattr(p, "series_key", None) != key]
        probs.append(SeriesProblem(path, f"{CANNOT_DISPLAY}: {reason}", key))
        self.set_problems(probs)

    def tile_kind(self, key: str) -> str | None:
        """What the series' tile shows: "placeholder", "thumbnail" or "cannot display"."""
        return self._tiles.get(key) if key in self._items else None

    def set_current(self, key: str) -> None:
        it = self._items.get(key)
        if it is None:
            return
        f = QFont(self.tree.font())
        for k, other in self._items.items():
            f.setBold(k == key)
            other.setFont(0, f)
        self.tree.blockSignals(True)
        self.tree.setCurrentItem(it)
        self.tree.blockSignals(False)

    def series_keys(self) -> list[str]:
        return [k for k in self._items if not k.startswith(IMAGE_KEY)]

    def image_keys(self) -> list[str]:
        return [k for k in self._items if k.startswith(IMAGE_KEY)]

    def _clicked(self, item, col=0):
        key = item.data(0, SERIES_ROLE)
        if key:
            self.seriesChosen.emit(str(key))
