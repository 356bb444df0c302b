"""The AI models dock (ui/ai/model_panel.py): on the right, above Overlays (``reading.py`` moves
it there, so studies and AI results are seen together); its results arrive as layers through the
window's add_layer.  It lists the models the first time it is shown.  The panel sits in a scroll
area, so a long result never makes the window taller than the screen."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QSize, Qt
from PySide6.QtWidgets import QDockWidget, QFrame, QScrollArea, QTabWidget

from ..shared.theme import DOCK_MIN_WIDTH


class _PanelScroll(QScrollArea):
    """Asks for the panel's full width (its table and results need it), takes less on a small
    screen (a horizontal scroll bar then) and any height (a vertical scroll bar when the screen
    is short)."""

    def __init__(self):
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAsNeeded)

    def setWidget(self, w):
        super().setWidget(w)
        w.installEventFilter(self)

    def eventFilter(self, obj, ev):
        if ev.type() == QEvent.LayoutRequest:  # the panel's content changed: ask the dock again
            self.updateGeometry()
        return False

    def _width(self) -> int:
        w = self.widget()
        need = max(w.sizeHint().width(), w.minimumSizeHint().width()) if w is not None else 0
        return max(420, need + self.verticalScrollBar().sizeHint().width())

    def sizeHint(self):
        return QSize(self._width(), super().sizeHint().height())

    def minimumSizeHint(self):
        return QSize(min(self._width(), DOCK_MIN_WIDTH), 160)


def add_ai_dock(win):
    """Sets ``win.model_panel``, ``win.model_dock`` and ``win.a_models`` (View and Overlays menus)."""
    from ..ai.model_panel import ModelPanel
    win.model_panel = ModelPanel(win.doc, add_layer=win.add_layer)
    win.model_dock = QDockWidget("AI models", win)
    win.model_dock.setObjectName("ModelsDock")
    scroll = _PanelScroll()
    scroll.setWidget(win.model_panel)
    win.model_dock.setWidget(scroll)
    win.addDockWidget(Qt.LeftDockWidgetArea, win.model_dock)
    win.tabifyDockWidget(win.browser_dock, win.model_dock)
    win.setTabPosition(Qt.LeftDockWidgetArea, QTabWidget.North)
    win.browser_dock.raise_()
    win.a_models = win._act("AI models…", win.show_model_panel, "Ctrl+M", tip="Run an AI model on the shown series")
    for a in win.menuBar().actions():
        if a.menu() is not None and a.text() in ("&View", "&Overlays"):
            a.menu().addSeparator()
            a.menu().addAction(win.model_dock.toggleViewAction() if a.text() == "&View" else win.a_models)


def show_ai_dock(win):
    win.model_dock.show()
    win.model_dock.raise_()
