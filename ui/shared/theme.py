"""Dark theme (reading-room convention): Fusion style, dark palette, a little QSS."""

from __future__ import annotations

from PySide6.QtGui import QColor, QFont, QPalette
from PySide6.QtWidgets import QApplication

BG = "#1e1f22"
PANEL = "#26282c"
BASE = "#17181a"
TEXT = "#d8dadf"
MUTED = "#8b9099"
ACCENT = "#3d8bfd"
WARN_BG = "#4a3b12"
WARN_FG = "#ffd98a"
ERROR_BG = "#4d1f1f"
ERROR_FG = "#ffb4b4"

# Slicer-like plane colours (used for MPR frames and crosshair lines).
PLANE_COLORS = {"axial": "#e05252", "coronal": "#5bbf5b", "sagittal": "#e6c84c", "native": "#8b9099"}

QSS = f"""
QMainWindow, QDialog {{ background: {BG}; }}
QDockWidget {{ color: {TEXT}; font-weight: 600; }}
QDockWidget::title {{ background: {PANEL}; padding: 5px 8px; border-bottom: 1px solid #33363b; }}
QToolBar {{ background: {PANEL}; border: none; border-bottom: 1px solid #33363b; spacing: 2px; padding: 2px; }}
QToolBar QToolButton {{ color: {TEXT}; padding: 4px 7px; border-radius: 4px; }}
QToolBar QToolButton:hover {{ background: #34373d; }}
QToolBar QToolButton:checked {{ background: #2f4f7a; color: white; }}
QStatusBar {{ background: {PANEL}; color: {TEXT}; border-top: 1px solid #33363b; }}
QStatusBar QLabel {{ color: {TEXT}; padding: 0 6px; }}
QTreeWidget, QTableWidget, QListWidget, QTreeView {{ background: {BASE}; alternate-background-color: #1b1c1f;
    border: 1px solid #2e3035; selection-background-color: #2f4f7a; selection-color: white; }}
QHeaderView::section {{ background: {PANEL}; color: {MUTED}; padding: 4px 6px; border: none;
    border-right: 1px solid #33363b; border-bottom: 1px solid #33363b; }}
QLineEdit, QComboBox, QSpinBox, QDoubleSpinBox {{ background: {BASE}; color: {TEXT}; border: 1px solid #3a3d43;
    border-radius: 3px; padding: 3px 5px; }}
QPushButton {{ background: #33363c; color: {TEXT}; border: 1px solid #43464d; border-radius: 4px; padding: 5px 12px; }}
QPushButton:hover {{ background: #3d4048; }}
QPushButton:pressed {{ background: #2f4f7a; }}
QProgressBar {{ background: {BASE}; border: 1px solid #3a3d43; border-radius: 3px; color: {TEXT}; text-align: center;
    max-height: 16px; }}
QProgressBar::chunk {{ background: {ACCENT}; }}
QSlider::groove:horizontal {{ height: 4px; background: #3a3d43; border-radius: 2px; }}
QSlider::handle:horizontal {{ background: {TEXT}; width: 12px; margin: -5px 0; border-radius: 6px; }}
QSlider::sub-page:horizontal {{ background: {ACCENT}; border-radius: 2px; }}
QMenu {{ background: {PANEL}; color: {TEXT}; border: 1px solid #3a3d43; }}
QMenu::item:selected {{ background: #2f4f7a; }}
QMenuBar {{ background: {PANEL}; color: {TEXT}; }}
QMenuBar::item:selected {{ background: #34373d; }}
QTabBar::tab {{ background: {PANEL}; color: {MUTED}; padding: 5px 12px; border: 1px solid #33363b; }}
QTabBar::tab:selected {{ color: {TEXT}; background: #30333a; }}
QToolTip {{ background: #2b2d31; color: {TEXT}; border: 1px solid #4a4d55; }}
QLabel#Banner {{ background: {WARN_BG}; color: {WARN_FG}; padding: 6px 10px; border-bottom: 1px solid #6b5516; }}
QLabel#BannerError {{ background: {ERROR_BG}; color: {ERROR_FG}; padding: 6px 10px; border-bottom: 1px solid #7a2e2e; }}
QLabel#SectionTitle {{ color: {MUTED}; font-weight: 600; padding: 6px 2px 2px 2px; }}
QLabel#ProblemsTitle {{ color: {WARN_FG}; font-weight: 600; padding: 6px 2px 2px 2px; }}
QWidget#Welcome {{ background: {BG}; }}
QLabel#WelcomeTitle {{ color: {TEXT}; font-size: 22pt; font-weight: 300; }}
QLabel#WelcomeHint {{ color: {MUTED}; font-size: 11pt; }}
"""


def apply_dark_theme(app: QApplication) -> None:
    app.setStyle("Fusion")
    p = QPalette()
    c = {
        QPalette.Window: BG, QPalette.WindowText: TEXT, QPalette.Base: BASE,
        QPalette.AlternateBase: "#1b1c1f", QPalette.ToolTipBase: "#2b2d31", QPalette.ToolTipText: TEXT,
        QPalette.Text: TEXT, QPalette.Button: "#2c2e33", QPalette.ButtonText: TEXT,
        QPalette.BrightText: "#ff6b6b", QPalette.Highlight: "#2f4f7a", QPalette.HighlightedText: "#ffffff",
        QPalette.Link: ACCENT, QPalette.PlaceholderText: MUTED,
    }
    for role, col in c.items():
        p.setColor(role, QColor(col))
    for role in (QPalette.Text, QPalette.ButtonText, QPalette.WindowText):
        p.setColor(QPalette.Disabled, role, QColor("#5d6169"))
    app.setPalette(p)
    f = QFont(app.font())
    if f.pointSizeF() < 10:
        f.setPointSizeF(10)
    app.setFont(f)
    app.setStyleSheet(QSS)
