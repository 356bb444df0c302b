"""The heat-map legend of a slice view: a low -> high colour bar in the viewport margin beside
the image (never over anatomy), titled with what the values mean ("relative attribution,
Grad-CAM", or a parametric map's units), with the threshold below which nothing is drawn.

The bar shows the colours as the map draws them over tissue: blended with their fading opacity
(:func:`imaging_assist.colormaps.fade_alpha`, up to the layer's opacity) over mid-grey, so the
part under the threshold is plain grey.  An explanation's top reads "max", or the percentile
where its colour range ends (Saliency, IG, occlusion: "99.5th pct"); the threshold's tick is a
percentage of that top.  A map with nothing to draw (one value everywhere) gets its name and
"constant map (0.8): nothing to show" instead of a bar.  When the image fills the view (zoomed
in) there is no margin and no legend; the Overlays panel still lists the range.  The legend keeps
clear of the corner texts: in a short view the bar shrinks to fit between them, then the title
is left out, then the whole legend.
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


_BAR_CACHE: dict = {}


def legend_image(layer, n: int = 128) -> QImage:
    """The bar (1 x n pixels, top = vmax) as the map looks over mid-grey tissue; cached per layer
    version (the views repaint on every scroll step)."""
    key = (id(layer), layer._version, layer.colormap, layer.vmin, layer.vmax, layer.threshold, layer.mode,
           layer.fade, layer.opacity, n)  # the settings too: an id can be reused by a new layer
    img = _BAR_CACHE.get(key)
    if img is None:
        if len(_BAR_CACHE) > 32:
            _BAR_CACHE.clear()
        img = _BAR_CACHE[key] = _legend_image(layer, n)
    return img


def _legend_image(layer, n: int) -> QImage:
    rgb, lo, hi = layer.legend(n)
    v = np.linspace(0.0, 1.0, n, dtype=np.float32)
    op = float(np.clip(layer.opacity, 0.0, 1.0))  # as HeatmapLayer.lut draws it
    if layer.mode == "contour" or not layer.fade:
        a = np.full(n, op, np.float32)
    else:
        thr = (layer.threshold - lo) / (hi - lo) if hi > lo and np.isfinite(layer.threshold) else 1.0
        a = fade_alpha(v, max(0.0, float(thr)), op)
    col = rgb.astype(np.float32) * a[:, None] + GREY * (1 - a[:, None])
    col = np.clip(col + 0.5, 0, 255).astype(np.uint32)[::-1]
    words = np.ascontiguousarray(((col[:, 0] << 16) | (col[:, 1] << 8) | col[:, 2] | np.uint32(0xFF000000))
                                 .reshape(-1, 1))
    img = QImage(words.data, 1, n, 4, QImage.Format_RGB32)
    return img.copy()  # own the pixels (words is a local array)


def _labels(layer) -> tuple[str, str, str]:
    """(top, bottom, threshold tick) texts.  An explanation's top is "max", or, when its colour
    range ends below the data's maximum, the percentile it ends at ("99.5th pct"); the tick is
    the threshold's percentage of that top."""
    lo, hi = layer.vmin, layer.vmax
    if layer.units or not layer.method:
        f = lambda x: f"{x:.3g}"
        return f(hi), f(lo), f(layer.threshold)
    pct = 100 * (layer.threshold - lo) / (hi - lo) if hi > lo else 0.0
    rank = layer.top_percentile()
    top = "max" if rank is None else f"{_ordinal(rank)} pct"
    return top, f"{lo:.3g}" if lo != 0 else "0", f"{pct:.0f} %"


def _ordinal(x: float) -> str:
    """99.5 -> "99.5th", 99 -> "99th", 1 -> "1st", 42 -> "42nd"."""
    t = f"{x:.1f}".rstrip("0").rstrip(".")
    if "." in t or 10 <= int(t) % 100 <= 20:
        return t + "th"
    return t + {1: "st", 2: "nd", 3: "rd"}.get(int(t) % 10, "th")


def paint_legend(view, p) -> QRectF | None:
    """Draw the topmost visible heat map's legend in a margin of ``view`` beside the image: a
    vertical bar in the wider side margin, else a horizontal bar in the bottom margin (between
    the corner texts, above the orientation letter).  Returns the rectangle it covers (None when there was no room) and keeps it
    as ``view.legend_rect``."""
    view.legend_rect = None
    heat = view.doc.layers.heatmaps()
    if not heat or view.height() < 200:
        return None
    layer = heat[-1]
    fm = QFontMetricsF(view._font)
    img = view.image_rect().intersected(QRectF(view.rect()))
    W, H = float(view.width()), float(view.height())
    note = layer.constant_note()
    top_s, bot_s, thr_s = _labels(layer)
    text_w = max(fm.horizontalAdvance(s) for s in (top_s, bot_s, thr_s))
    right, left = W - img.right(), img.left()
    p.save()
    p.setRenderHint(p.RenderHint.SmoothPixmapTransform, True)
    p.setFont(view._font)
    if note:  # no colours drawn: a bar would show a range the map does not have
        rect = _note(view, p, fm, img, [layer.name, note])
    elif max(right, left) >= GAP + BAR_W + 6 + text_w + LETTER_ROOM:
        rect = _vertical(view, p, layer, fm, img, right >= left, (top_s, bot_s, thr_s), text_w)
    else:
        # under the image, centred between the bottom corner texts and above the orientation letter
        corner = 0.0
        if view.doc.show_annotations:
            t = view.annotation_text()
            corner = max([fm.horizontalAdvance(x) for c in ("bl", "br") for x in t.get(c, [])] or [0.0])
        room = W - 2 * (corner + 8 + 16)
        need = 8 + BAR_W + 4 + fm.height() + fm.height() + 10  # bar, title, the orientation letter
        rect = _horizontal(view, p, layer, fm, img, (top_s, bot_s, thr_s), room) \
            if H - img.bottom() >= need and room >= 160 else None
    p.restore()
    view.legend_rect = rect
    return rect


def _note(view, p, fm, img, lines) -> QRectF | None:
    """Lines of text instead of a bar, in the wider side margin (else under the image)."""
    W, H = float(view.width()), float(view.height())
    right, left = W - img.right(), img.left()
    room = max(right, left) - GAP - LETTER_ROOM
    under = H - img.bottom() >= 8 + len(lines) * fm.height() + fm.height() + 10  # and the letter
    if room < 80 and not under:
        return None
    lines = [fm.elidedText(s, Qt.ElideRight, room if room >= 80 else W - 80) for s in lines]
    widest = max(fm.horizontalAdvance(s) for s in lines)
    if room >= 80:
        x = img.right() + GAP if right >= left else img.left() - GAP - widest
        y = (H - len(lines) * fm.height()) / 2
    else:
        x, y = (W - widest) / 2, img.bottom() + 8
    for n, s in enumerate(lines):
        view._draw_text(p, x, y + n * fm.height() + fm.ascent(), s,
                        QColor("#e8e8e8") if n == 0 else QColor("#b8bcc4"))
    return QRectF(x, y, widest, len(lines) * fm.height())


def _ticks(layer) -> list[float]:
    lo, hi = layer.vmin, layer.vmax
    if layer.mode == "contour":
        return [lo + f * (hi - lo) for f in CONTOUR_LEVELS]
    return [layer.threshold] if np.isfinite(layer.threshold) and lo < layer.threshold < hi else []


def _frac(layer, value) -> float:
    lo, hi = layer.vmin, layer.vmax
    return min(max((value - lo) / (hi - lo), 0.0), 1.0) if hi > lo else 0.0


def _title_lines(layer) -> list[str]:
    """The map's name and what its values mean, without naming the method twice."""
    what = layer.legend_title()
    if layer.method and not layer.units and layer.method in layer.name:
        what = "relative attribution"
    return [layer.name, what]


MIN_BAR = 40.0  # a shorter bar is no legend


def _free_band(view, x0: float, x1: float) -> tuple[float, float]:
    """(top, bottom) of the view's height that no corner line covers between x0 and x1 (the
    corner lines' boxes as _paint_annotations drew them, ``view.corner_boxes``)."""
    H = float(view.height())
    lo, hi = 0.0, H
    for b in getattr(view, "corner_boxes", []):
        if b.right() < x0 or b.left() > x1:
            continue
        if b.center().y() < H / 2:
            lo = max(lo, b.bottom())
        else:
            hi = min(hi, b.top())
    return lo + 4, hi - 4


def _vertical(view, p, layer, fm, img, on_right, labels, text_w) -> QRectF | None:
    """The bar beside the image, its title above it, between the top and bottom corner texts:
    in a short view the bar shrinks to fit, then the title goes, then the legend (None)."""
    top_s, bot_s, thr_s = labels
    H = float(view.height())
    x = img.right() + GAP if on_right else img.left() - GAP - BAR_W
    text_x = x + BAR_W + 6 if on_right else x - 6 - text_w
    room = (view.width() - img.right() if on_right else img.left()) - GAP - LETTER_ROOM
    for lines in ([fm.elidedText(s, Qt.ElideRight, room) for s in _title_lines(layer)], []):
        widest = max([fm.horizontalAdvance(s) for s in lines] or [0.0])
        tx = img.right() + GAP if on_right else img.left() - GAP - widest
        x0 = min(x - 3, text_x, tx)
        x1 = max(x + BAR_W + 3, text_x + text_w, tx + widest)
        # above the bar: the title lines, else half the top value's line; below: the bottom value
        head = 8 + len(lines) * fm.height() if lines else fm.ascent() / 2 + 2
        lo, hi = _free_band(view, x0, x1)
        bar_h = min(200.0, H * 0.4, hi - lo - head - fm.height())
        if bar_h >= MIN_BAR:
            break
    else:
        return None
    # centred in the view where that is clear of the corner texts, else moved into the clear band
    y = min(max((H - bar_h) / 2, lo + head), hi - fm.height() - bar_h)
    p.drawImage(QRectF(x, y, BAR_W, bar_h), legend_image(layer))
    p.setPen(QPen(QColor(200, 200, 200, 160), 1))
    p.setBrush(Qt.NoBrush)
    p.drawRect(QRectF(x, y, BAR_W, bar_h))

    def text(s, yy):
        tx = text_x if on_right else text_x + text_w - fm.horizontalAdvance(s)
        view._draw_text(p, tx, yy + fm.ascent() / 2 - 1, s)

    text(top_s, y)
    text(bot_s, y + bar_h)
    p.setPen(QPen(QColor("white"), 2))
    ticks = _ticks(layer)
    for t in ticks:
        ty = y + bar_h * (1 - _frac(layer, t))
        p.drawLine(QPointF(x - 3, ty), QPointF(x + BAR_W + 3, ty))
    if layer.mode != "contour" and ticks:
        ty = y + bar_h * (1 - _frac(layer, ticks[0]))
        if fm.height() < ty - y and fm.height() < y + bar_h - ty:
            text(thr_s, ty)
    for n, s in enumerate(lines):
        view._draw_text(p, tx, y - 8 - (len(lines) - 1 - n) * fm.height() - fm.descent(), s,
                        QColor("#e8e8e8") if n == 0 else QColor("#b8bcc4"))
    return QRectF(x0, y - head, x1 - x0, bar_h + head + fm.height())


def _horizontal(view, p, layer, fm, img, labels, room: float) -> QRectF:
    """Low on the left, high on the right, just under the image; the title under the bar."""
    top_s, bot_s, thr_s = labels
    W = float(view.width())
    bar_w = min(240.0, room - 2 * (max(fm.horizontalAdvance(top_s), fm.horizontalAdvance(bot_s)) + 8))
    x = (W - bar_w) / 2
    y = img.bottom() + 8
    bar = legend_image(layer).transformed(_rot())  # the vertical bar turned: low on the left
    p.drawImage(QRectF(x, y, bar_w, BAR_W), bar)
    p.setPen(QPen(QColor(200, 200, 200, 160), 1))
    p.setBrush(Qt.NoBrush)
    p.drawRect(QRectF(x, y, bar_w, BAR_W))
    base = y + BAR_W / 2 + fm.ascent() / 2 - 1
    view._draw_text(p, x - 6 - fm.horizontalAdvance(bot_s), base, bot_s)
    view._draw_text(p, x + bar_w + 6, base, top_s)
    p.setPen(QPen(QColor("white"), 2))
    for t in _ticks(layer):
        tx = x + bar_w * _frac(layer, t)
        p.drawLine(QPointF(tx, y - 3), QPointF(tx, y + BAR_W + 3))
    title = fm.elidedText(" · ".join(_title_lines(layer)), Qt.ElideRight, room)
    tw = fm.horizontalAdvance(title)
    view._draw_text(p, (W - tw) / 2, y + BAR_W + 4 + fm.ascent(), title, QColor("#d0d3d8"))
    x0 = min(x - 6 - fm.horizontalAdvance(bot_s), (W - tw) / 2)
    x1 = max(x + bar_w + 6 + fm.horizontalAdvance(top_s), (W + tw) / 2)
    return QRectF(x0, y - 3, x1 - x0, BAR_W + 7 + fm.height())


def _rot():
    from PySide6.QtGui import QTransform
    return QTransform().rotate(90)
