"""Dark theme (reading-room convention): Fusion style, dark palette, a little QSS."""

from __future__ import annotations

from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QColor, QFont, QIcon, QPainter, QPalette, QPen, QPixmap
from PySide6.QtWidgets import QApplication, QProxyStyle, QStyle, QStyleFactory

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

#: The narrowest a dock may be made (its content scrolls or elides below its preferred width):
#: small enough that the window, with the studies on the left and a dock on the right, fits a
#: 1280-px screen (a laptop at a clinic demo; tests/test_ui_small_screen.py).
DOCK_MIN_WIDTH = 220

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
QToolBar QToolButton#qt_toolbar_ext_button {{ padding: 0px; }}
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


class _DarkFusion(QProxyStyle):
    """Fusion with a toolbar extension button that shows on the dark palette: Fusion draws its
    arrow dark, invisible here, so a narrow window (a laptop screen) hid the toolbar's last
    items without a sign that they were one click away."""

    def __init__(self):
        super().__init__(QStyleFactory.create("Fusion"))
        self._chevrons: dict = {}

    def standardIcon(self, sp, opt=None, widget=None):
        if sp in (QStyle.SP_ToolBarHorizontalExtensionButton, QStyle.SP_ToolBarVerticalExtensionButton):
            if sp not in self._chevrons:
                self._chevrons[sp] = _chevron(sp == QStyle.SP_ToolBarVerticalExtensionButton)
            return self._chevrons[sp]
        return super().standardIcon(sp, opt, widget)

    def pixelMetric(self, metric, opt=None, widget=None):
        if metric == QStyle.PM_ToolBarExtensionExtent:
            return 20  # room for the 16-px chevron (Fusion: 12)
        return super().pixelMetric(metric, opt, widget)


def _chevron(down: bool) -> QIcon:
    """A double chevron (») in the text colour, pointing right (or down)."""
    pm = QPixmap(16, 16)
    pm.fill(Qt.transparent)
    p = QPainter(pm)
    p.setRenderHint(QPainter.Antialiasing)
    p.setPen(QPen(QColor(TEXT), 1.6))
    for x0 in (3.5, 8.5):
        pts = [QPointF(x0, 4), QPointF(x0 + 4, 8), QPointF(x0, 12)]
        if down:
            pts = [QPointF(q.y(), q.x()) for q in pts]
        p.drawPolyline(pts)
    p.end()
    return QIcon(pm)


def text_only_toolbar(tb) -> None:
    """Text-only tool buttons, and the » button that opens what a narrow window cannot show
    (a laptop screen) drawn as its icon: the toolbar's text-only style reaches that button too,
    and it has no text, so it was drawn blank."""
    from PySide6.QtWidgets import QToolButton

    tb.setToolButtonStyle(Qt.ToolButtonTextOnly)
    ext = tb.findChild(QToolButton, "qt_toolbar_ext_button")
    if ext is not None:
        ext.setToolButtonStyle(Qt.ToolButtonIconOnly)
        ext.setToolTip("More tools: the window is too narrow to show them all")


def apply_dark_theme(app: QApplication) -> None:
    style = _DarkFusion()
    app.setStyle(style)
    app._ia_style = style  # Qt takes the style; the Python wrapper must live as long
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
