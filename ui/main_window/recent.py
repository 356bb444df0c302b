"""The welcome page and the recent-studies list (File ▸ Open recent and the welcome page),
kept in the window's QSettings."""

from __future__ import annotations

import os

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout, QWidget

from ..shared.text import plain_tip

MAX_RECENT = 10
# A path whose name is no valid UTF-8 (b"caf\xe9": a str with a surrogate escape) is stored as
# this marker and its bytes in hex: Qt's strings (settings, menu, item data, str signals) drop
# the escaped byte and reopened another path.  Stored paths are absolute: none starts so.
BYTES_MARK = "fs-bytes:"


def _stored(path: str) -> str:
    """``path`` as the settings keep it (see BYTES_MARK)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return BYTES_MARK + os.fsencode(path).hex()


def _path(stored: str) -> str:
    """The path a stored entry names (its bytes back for one stored by BYTES_MARK)."""
    if stored.startswith(BYTES_MARK):
        try:
            return os.fsdecode(bytes.fromhex(stored[len(BYTES_MARK):]))
        except ValueError:
            pass
    return stored


def _shown(path: str) -> str:
    """``path`` for display: a byte that is no UTF-8 shown as \ufffd."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class WelcomePage(QWidget):
    openFolder = Signal()
    openFile = Signal()
    openPath = Signal(object)  # a path (str, possibly with surrogate escapes: not a QString)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("Welcome")
        lay = QVBoxLayout(self)
        lay.addStretch(2)
        title = QLabel("Imaging Assist")
        title.setObjectName("WelcomeTitle")
        title.setAlignment(Qt.AlignCenter)
        hint = QLabel("Open a DICOM folder, zip, DICOMDIR or file — or drop it anywhere in this window.\n"
                      "Research software, not for clinical use.")
        hint.setObjectName("WelcomeHint")
        hint.setAlignment(Qt.AlignCenter)
        hint.setWordWrap(True)  # a narrow window (small screen, docks open) wraps it
        row = QHBoxLayout()
        row.addStretch(1)
        b1 = QPushButton("Open folder…")
        b1.clicked.connect(self.openFolder)
        b2 = QPushButton("Open file…")
        b2.clicked.connect(self.openFile)
        for b in (b1, b2):
            b.setMinimumWidth(150)
            b.setMinimumHeight(34)
            row.addWidget(b)
        row.addStretch(1)
        self.recent_list = QListWidget()
        self.recent_list.setMaximumWidth(720)
        self.recent_list.setMinimumWidth(300)
        self.recent_list.setMinimumHeight(120)
        self.recent_list.setMaximumHeight(260)
        self.recent_list.setTextElideMode(Qt.ElideMiddle)
        self.recent_list.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.recent_list.itemActivated.connect(lambda it: self.openPath.emit(_path(it.data(Qt.UserRole))))
        self.recent_list.itemClicked.connect(lambda it: self.openPath.emit(_path(it.data(Qt.UserRole))))
        self.recent_title = QLabel("Recent studies")
        self.recent_title.setObjectName("SectionTitle")
        rl = QVBoxLayout()
        rl.addWidget(self.recent_title)
        rl.addWidget(self.recent_list)
        rrow = QHBoxLayout()
        rrow.addStretch(1)
        rrow.addLayout(rl, 6)  # most of the width (up to 720 px), 300 px in a narrow window
        rrow.addStretch(1)
        lay.addWidget(title)
        lay.addSpacing(8)
        lay.addWidget(hint)
        lay.addSpacing(20)
        lay.addLayout(row)
        lay.addSpacing(24)
        lay.addLayout(rrow)
        lay.addStretch(3)


class RecentStudies(QObject):
    """The recent list in ``settings`` ("recent"), shown in ``menu`` and on ``welcome``."""

    openPath = Signal(object)  # as WelcomePage.openPath

    def __init__(self, settings, welcome: WelcomePage, parent=None):
        super().__init__(parent)
        self.settings = settings
        self.welcome = welcome
        self.menu = None
        self.remember = True  # False: studies opened are not added (a one-off `view --screenshot`)

    def paths(self) -> list[str]:
        v = self.settings.value("recent", [])
        if isinstance(v, str):
            v = [v]
        return [_path(str(x)) for x in (v or [])]

    def add(self, path: str):
        if not self.remember:
            return
        path = os.path.abspath(path)
        # Another window (process) may have added a study since this one read the settings: read
        # the file again first, and write at once, so that neither window's study is dropped.
        self.settings.sync()
        lst = [p for p in self.paths() if p != path]
        lst.insert(0, path)
        self.settings.setValue("recent", [_stored(p) for p in lst[:MAX_RECENT]])
        self.settings.sync()
        self.rebuild_menu()

    def set_menu(self, menu):
        self.menu = menu
        self.rebuild_menu()

    def rebuild_menu(self):
        if self.menu is not None:
            self.menu.clear()
            rec = self.paths()
            for p in rec:
                a = self.menu.addAction(_shown(p).replace("&", "&&"))  # "&" is a menu mnemonic
                a.triggered.connect(lambda checked=False, pp=p: self.openPath.emit(pp))
            self.menu.setEnabled(bool(rec))
            if rec:
                self.menu.addSeparator()
                self.menu.addAction("Clear list", self.clear)
        self.refresh_list()

    def clear(self):
        self.settings.setValue("recent", [])
        self.settings.sync()  # at once: another window's next add reads the file again
        self.rebuild_menu()

    def refresh_list(self):
        lst = self.welcome.recent_list
        lst.clear()
        rec = self.paths()
        for p in rec:
            name = os.path.basename(p.rstrip("/")) or p
            text = _shown(f"{name}    —    {os.path.dirname(p.rstrip('/'))}")
            it = QListWidgetItem(text if os.path.exists(p) else f"{text}  (missing)")
            it.setToolTip(plain_tip(_shown(p)))  # a folder name is shown as written, never as HTML
            it.setData(Qt.UserRole, _stored(p))
            lst.addItem(it)
        lst.setVisible(bool(rec))
        self.welcome.recent_title.setVisible(bool(rec))
