"""The AI models dock (ui/ai/model_panel.py), tabbed with Studies; its results arrive as layers
through the window's add_layer.  It lists the models the first time it is shown."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDockWidget, QTabWidget


def add_ai_dock(win):
    """Sets ``win.model_panel``, ``win.model_dock`` and ``win.a_models`` (View and Overlays menus)."""
    from ..ai.model_panel import ModelPanel
    win.model_panel = ModelPanel(win.doc, add_layer=win.add_layer)
    win.model_dock = QDockWidget("AI models", win)
    win.model_dock.setObjectName("ModelsDock")
    win.model_dock.setWidget(win.model_panel)
    win.model_dock.setMinimumWidth(420)
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
