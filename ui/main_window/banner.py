"""The warnings banner above the views: one line of warnings (or an error) with a close button."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QToolButton, QWidget


class WarningsBanner(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.label = QLabel()
        self.label.setObjectName("Banner")
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.label.hide()
        self.close_btn = QToolButton()
        self.close_btn.setText("✕")
        self.close_btn.setToolTip("Hide this message")
        self.close_btn.setAutoRaise(True)
        self.close_btn.clicked.connect(self.clear)
        self.close_btn.hide()
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(0)
        row.addWidget(self.label, 1)
        row.addWidget(self.close_btn)

    def show_message(self, text: str, error: bool = False) -> None:
        lab = self.label
        lab.setObjectName("BannerError" if error else "Banner")
        lab.setStyleSheet("")  # re-polish with the new object name
        lab.style().unpolish(lab)
        lab.style().polish(lab)
        # ⊘ is in DejaVu Sans; ⛔ needs an emoji font (an empty box without one)
        lab.setText(("⊘ " if error else "⚠ ") + text)
        lab.show()
        self.close_btn.show()

    def clear(self) -> None:
        self.label.hide()
        self.close_btn.hide()

    def text(self) -> str:
        return self.label.text() if self.label.isVisible() else ""
