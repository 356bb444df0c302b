"""The warnings banner above the views: one line of warnings (or an error) with a close button.

The symbol is the style's own message-box icon (a pixmap), not a text glyph: "⛔" and the
like need an emoji font and render as an empty box without one."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QStyle, QToolButton, QWidget

ICON_PX = 16


class WarningsBanner(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.icon = QLabel()
        self.icon.setObjectName("Banner")
        self.icon.setAlignment(Qt.AlignTop | Qt.AlignHCenter)
        self.icon.hide()
        self.label = QLabel()
        self.label.setObjectName("Banner")
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.PlainText)  # warnings may quote header values and file names: never markup
        self.label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.label.hide()
        self.close_btn = QToolButton()
        self.close_btn.setText("✕")
        self.close_btn.setToolTip("Hide this message")
        self.close_btn.setAutoRaise(True)
        self.close_btn.clicked.connect(self.clear)
        self.close_btn.hide()
        self.error = False
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(0)
        row.addWidget(self.icon)
        row.addWidget(self.label, 1)
        row.addWidget(self.close_btn)

    def show_message(self, text: str, error: bool = False) -> None:
        self.error = error
        name = "BannerError" if error else "Banner"
        for lab in (self.icon, self.label):
            lab.setObjectName(name)
            lab.style().unpolish(lab)
            lab.style().polish(lab)
        self.label.setStyleSheet("padding-left: 4px")  # the icon sits just before the text
        self.icon.setStyleSheet("padding-right: 0px")
        sp = QStyle.SP_MessageBoxCritical if error else QStyle.SP_MessageBoxWarning
        self.icon.setPixmap(self.style().standardIcon(sp).pixmap(ICON_PX, ICON_PX))
        self.label.setText(text)
        self.icon.show()
        self.label.show()
        self.close_btn.show()

    def clear(self) -> None:
        self.icon.hide()
        self.label.hide()
        self.close_btn.hide()

    def text(self) -> str:
        return self.label.text() if self.label.isVisible() else ""
