"""The heat-map legend of a slice view: a low -> high colour bar in the viewport margin beside
the image (never over anatomy), titled with what the values mean ("relative attribution,
Grad-CAM", or a parametric map's units), with the threshold below which nothing is drawn.

The bar shows the colours as the map draws them over tissue: blended with their fading opacity
(:func:`imaging_assist.colormaps.fade_alpha`) over mid-grey, so the part under the threshold
is plain grey.  When the image fills the view (zoomed in) there is no margin and no legend; the
Overlays panel still lists the range.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFontMetricsF, QImage, QPen

from imaging_assist.colormaps import CONTOUR_LEVELS, fade_alpha

BAR_W = 12.0
GAP = 12.0          # between the image edge and the bar
LETTER_ROOM = 26.0  # the orientation letter at the view's edge
GREY = 96.0


def legend_image(layer, n: int = 128) -> QImage:
    """The bar (1 x n pixels, top = vmax) as the map looks over mid-grey tissue."""
    rgb, lo, hi = layer.legend(n)
    v = np.linspace(0.0, 1.0, n, dtype=np.float32)
    if layer.mode == "contour" or not layer.fade:
        a = np.full(n, 1.0, np.float32)
    else:
        thr = (layer.threshold - lo) / (hi - lo) if hi > lo and np.isfinite(layer.threshold) else 1.0
        a = fade_alpha(v, max(0.0, float(thr)), 1.0)
    col = rgb.astype(np.float32) * a[:, None] + GREY * (1 - a[:, None])
    col = np.clip(col + 0.5, 0, 255).astype(np.uint32)[::-1]
    words = np.ascontiguousarray(((col[:, 0] << 16) | (col[:, 1] << 8) | col[:, 2] | np.uint32(0xFF000000))
                                 .reshape(-1, 1))
    img = QImage(words.data, 1, n, 4, QImage.Format_RGB32)
    return img.copy()  # own the pixels (words is a local array)


def _labels(layer) -> tuple[str, str, str]:
    """(top, bottom, threshold tick) texts."""
    lo, hi = layer.vmin, layer.vmax
    if layer.units or not layer.method:
        f = lambda x: f"{x:.3g}"
        return f(hi), f(lo), f(layer.threshold)
    pct = 100 * (layer.threshold - lo) / (hi - lo) if hi > lo else 0.0
    return "max", f"{lo:.3g}" if lo != 0 else "0", f"{pct:.0f} %"


def paint_legend(view, p) -> QRectF | None:
    """Draw the topmost visible heat map's legend in the widest side margin of ``view``; returns
    the rectangle it covers (None when it was not drawn) and keeps it as ``view.legend_rect``."""
    view.legend_rect = None
    heat = view.doc.layers.heatmaps()
    if not heat or view.height() < 260:
        return None
    layer = heat[-1]
    fm = QFontMetricsF(view._font)
    top_s, bot_s, thr_s = _labels(layer)
    text_w = max(fm.horizontalAdvance(s) for s in (top_s, bot_s, thr_s))
    need = GAP + BAR_W + 6 + text_w + LETTER_ROOM
    img = view.image_rect().intersected(QRectF(view.rect()))
    W, H = float(view.width()), float(view.height())
    right, left = W - img.right(), img.left()
    if max(right, left) < need:
        return None  # no margin: the legend would cover the image
    room = max(right, left) - GAP - LETTER_ROOM
    bar_h = min(200.0, H * 0.4)
    y = (H - bar_h) / 2
    if right >= left:
        x = img.right() + GAP
        text_x = x + BAR_W + 6
    else:  # the left margin: the text sits left of the bar, against the image
        x = img.left() - GAP - BAR_W
        text_x = x - 6 - text_w
    x0 = min(x, text_x)
    p.save()
    p.setRenderHint(p.RenderHint.SmoothPixmapTransform, True)
    p.drawImage(QRectF(x, y, BAR_W, bar_h), legend_image(layer))
    p.setPen(QPen(QColor(200, 200, 200, 160), 1))
    p.setBrush(Qt.NoBrush)
    p.drawRect(QRectF(x, y, BAR_W, bar_h))
    p.setFont(view._font)
    lo, hi = layer.vmin, layer.vmax

    def ypos(value):
        f = (value - lo) / (hi - lo) if hi > lo else 0.0
        return y + bar_h * (1 - min(max(f, 0.0), 1.0))

    def text(s, yy):
        tx = text_x if right >= left else text_x + text_w - fm.horizontalAdvance(s)
        view._draw_text(p, tx, yy + fm.ascent() / 2 - 1, s)

    text(top_s, y)
    text(bot_s, y + bar_h)
    ticks = ([lo + f * (hi - lo) for f in CONTOUR_LEVELS] if layer.mode == "contour"
             else [layer.threshold] if np.isfinite(layer.threshold) and lo < layer.threshold < hi else [])
    p.setPen(QPen(QColor("white"), 2))
    for t in ticks:
        ty = ypos(t)
        p.drawLine(QPointF(x - 3, ty), QPointF(x + BAR_W + 3, ty))
    if layer.mode != "contour" and ticks and abs(ypos(ticks[0]) - (y + bar_h)) > fm.height() \
            and abs(ypos(ticks[0]) - y) > fm.height():
        text(thr_s, ypos(ticks[0]))
    # title: the map's name and what its values mean, above the bar, within the margin
    title_w = room
    lines = [fm.elidedText(layer.name, Qt.ElideRight, title_w),
             fm.elidedText(layer.legend_title(), Qt.ElideRight, title_w)]
    widest = max(fm.horizontalAdvance(s) for s in lines)
    tx = x if right >= left else x + BAR_W - widest
    tx = max(img.right() + 4, tx) if right >= left else min(tx, img.left() - 4 - widest)
    for n, s in enumerate(lines):
        view._draw_text(p, tx, y - 8 - (len(lines) - 1 - n) * fm.height() - fm.descent(), s,
                        QColor("#e8e8e8") if n == 0 else QColor("#b8bcc4"))
    p.restore()
    top = y - 8 - len(lines) * fm.height()
    x1 = max(x + BAR_W + 3, text_x + text_w, tx + widest)
    x0 = min(x0, tx, x - 3)
    view.legend_rect = QRectF(x0, top, x1 - x0, y + bar_h + fm.height() - top)
    return view.legend_rect
