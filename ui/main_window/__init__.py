"""The main window: :class:`MainWindow` composes the workspace widgets (``radiology``, ``slides``,
``ai``) and the components in this package, each with one job (menus and actions, series loading,
the warnings banner, layouts, the AI dock, screenshots)."""

from .window import MainWindow

__all__ = ["MainWindow"]
