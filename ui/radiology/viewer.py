"""The slice view: one plane of the document's volume, with overlays, measurements,
crosshair and corner annotations, painted with QPainter from numpy-rendered QImages."""

from __future__ import annotations

import math
import time

import numpy as np
from PySide6.QtCore import QEvent, QMetaObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontMetricsF, QImage, QPainter, QPainterPath, QPen, QPolygonF
from PySide6.QtWidgets import QLineEdit, QApplication, QWidget

from imaging_assist.dicom.header import charset_doubt
from imaging_assist.layers import Plane
from imaging_assist.measure import N_POINTS, Measurement
from imaging_assist.overlay_text import NOT_READ_YET, age_text, dob_text, orientation, read_later
from imaging_assist.safe_text import printable
from imaging_assist.slab import Slab, depth_index, project, refusal, slab_indices

from . import annotation_tools as ann
from .document import ViewerDocument
from ..shared.theme import PLANE_COLORS
from ..shared.units import corner_note

TOOLS = ("navigate", "window", "pan", "zoom", "ruler", "ellipse", "rectangle", "angle", *ann.NEW_TOOLS)
MEASURE_TOOLS = ("ruler", "ellipse", "rectangle", "angle", *ann.NEW_TOOLS)
HANDLE_PX = 7
EMPHASIS = "#ffc857"  # corner lines that change what the pixels mean (a slab projection)
TEXT_BACKING_ALPHA = 170  # corner text backing: light text keeps >= 4.5:1 contrast over white


def _fmt_name(pn: str) -> str:
    """A person name for the corner: each component group (PS3.5 6.2.1: alphabetic =
    ideographic = phonetic, "Yamada^Tarou=山田^太郎=やまだ^たろう") formatted on its own and the
    groups joined by two spaces.  A group in a script with letter case reads "DOE, John A";
    one without (山田 太郎, 홍 길동) keeps its components in order and is never upper-cased."""
    out = []
    for group in str(pn or "").split("="):
        parts = [p.strip() for p in group.split("^")] + ["", ""]
        cased = any(c.lower() != c.upper() for c in group)
        if cased and parts[0] and parts[1]:
            out.append(f"{parts[0].upper()}, " + " ".join(p for p in parts[1:3] if p))
        elif " ".join(p for p in parts if p):
            out.append(" ".join(p for p in parts if p))
    return "  ".join(out)


def _printable_corners(t: dict) -> dict:
    """Corner texts with control characters shown escaped (safe_text.printable): header values
    (name, ID, descriptions, window names) may hold an ESC sequence, a line break or a bidi
    override (U+202E) that would show the rest of the line reversed ("ID 1174" for "ID 4711")."""
    return {k: ({printable(s) for s in v} if k == "em" else [printable(s) for s in v]) for k, v in t.items()}


def _fmt_date(d: str) -> str:
    d = str(d or "")
    return f"{d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) == 8 and d.isdigit() else d


def _fmt_num(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    if abs(v - round(v)) < 1e-6 or abs(v) >= 100:
        return f"{v:.0f}"
    # four significant digits: a window on fractional values (0..0.5) reads "L 0.25", not "L 0.2"
    digits = max(1, 3 - math.floor(math.log10(abs(v))))
    return f"{v:.{digits}f}".rstrip("0").rstrip(".")


def _fmt_window(w) -> tuple[str, str]:
    """W and L for the corner: a centre of 100 or more gets as many decimals as the width needs
    (W 0.5 on values near 1000 reads "L 1000.12", not "L 1000")."""
    ws, c = _fmt_num(w.width), w.center
    if c is None or not math.isfinite(c) or abs(c) < 100 or not math.isfinite(w.width) or w.width <= 0 \
            or abs(c - round(c)) < 1e-6:
        return ws, _fmt_num(c)
    digits = min(6, max(0, 2 - math.floor(math.log10(w.width))))
    return ws, (f"{c:.{digits}f}".rstrip("0").rstrip(".") if digits else f"{c:.0f}")


class SliceView(QWidget):
    """Shows ``doc.volume`` through ``plane`` at ``doc.position[plane.axis]``."""

    cursorInfo = Signal(str)     # status-bar text for the pixel under the mouse
    activated = Signal(object)   # this view got the focus / a click
    firstImagePainted = Signal(float)  # perf_counter() of the first paint with real pixels
    pointPicked = Signal(object, object)  # (view, (k, j, i)): Shift+click / N over the image (nodules)
    slabChanged = Signal(object)  # this view's thick slab (imaging_assist.slab.Slab) or None

    def __init__(self, doc: ViewerDocument, plane: Plane | None = None, parent=None, title: str = ""):
        super().__init__(parent)
        self.doc = doc
        self.plane = plane or Plane.native()
        self.title = title
        self.tool = "navigate"
        self.mpr_mode = False      # crosshair + plane title shown
        self.active = False
        self.zoom = 1.0            # screen px per mm
        self.center_mm = (0.0, 0.0)  # image-plane point (mm from the top-left edge) at the widget centre
        self.fit_mode = True
        self._drag = None
        self._pending: Measurement | None = None
        self._cursor_text = ""
        self._cursor_uv = None
        self._img_cache = None
        self._comp_cache = None
        self.slab: Slab | None = None  # thick-slab projection of this view (MIP / MinIP / average)
        self._slab_image = None        # the SlabImage on screen (corner text, cursor value)
        self._wheel_accum = 0
        self._first_painted = False
        self.extra_painters: list = []  # fn(view, painter) after the measurements (grid: reference lines)
        self.slab_siblings: list = []   # MPR: the views whose slab bounds this one draws
        # Display orientation of this view: mirrored left-right (first), then turned clockwise by
        # quarter turns.  Only the mapping to the screen changes: the plane, its (u, v) pixel
        # coordinates and every measurement stored in them stay as they are.
        self.turns = 0
        self.mirror = False
        self._oriented_cache = None
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.StrongFocus)
        self.setMinimumSize(160, 160)
        self.setAttribute(Qt.WA_OpaquePaintEvent, True)
        self.setAcceptDrops(False)
        f = QFont(self.font())
        f.setPointSizeF(10)
        self._font = f
        fb = QFont(f)
        fb.setPointSizeF(13)
        fb.setBold(True)
        self._font_orient = fb
        doc.volumeChanged.connect(self._on_volume)
        doc.windowChanged.connect(self._invalidate)
        doc.displayChanged.connect(self._invalidate)
        doc.layersChanged.connect(self.update)
        doc.measurementsChanged.connect(self.update)
        doc.selectionChanged.connect(self.update)
        doc.positionChanged.connect(self._on_position)
        doc.sliceLoaded.connect(self._on_slice_loaded)
        ann.annotations_for(doc)  # undo/redo, saved annotations (annotation_tools)

    # ------------------------------------------------------------------ state
    @property
    def vol(self):
        return self.doc.volume

    @property
    def index(self) -> int:
        return self.doc.position[self.plane.axis]

    @property
    def n_slices(self) -> int:
        return self.doc.shape3()[self.plane.axis] if self.vol is not None else 0

    def set_plane(self, plane: Plane):
        self.plane = plane
        self._img_cache = None
        self.fit()

    def set_slab(self, slab: Slab | None) -> str | None:
        """Show this view as a thick slab (None: the slice itself).  Returns why it cannot be
        shown on the current image (also said in the view's corner), else None."""
        self.slab = slab
        self._img_cache = None
        self.update()
        self.slabChanged.emit(slab)
        return self.slab_refusal()

    def slab_refusal(self) -> str | None:
        return None if self.slab is None else refusal(self.vol, self.plane)

    def slab_active(self) -> bool:
        return self.slab is not None and self.slab_refusal() is None

    def set_tool(self, tool: str):
        if tool not in TOOLS:
            raise ValueError(tool)
        self.tool = tool
        self._pending = None
        self.setCursor(Qt.CrossCursor if tool in MEASURE_TOOLS or (tool == "navigate" and self.mpr_mode)
                       else Qt.ArrowCursor)
        self.update()

    def _on_volume(self):
        self._img_cache = None
        self._pending = None
        self._drag = None
        self.turns, self.mirror, self._oriented_cache = 0, False, None  # another image: as stored
        self.fit()

    def _invalidate(self):
        self._img_cache = None
        self.update()

    def _on_position(self, axis):
        self.update()  # the image cache is keyed by slice index

    def _on_slice_loaded(self, k):
        if self.plane.axis == 0:
            if k == self.index or self.slab_active():  # a slab's neighbours count too (keyed by what is loaded)
                self._img_cache = None
                self.update()
        else:  # a reformatted plane shows every slice: refresh (callers throttle)
            self._img_cache = None
            self.update()

    # ------------------------------------------------------------------ geometry
    def spacing2d(self) -> tuple[float, float]:
        """(horizontal, vertical) pixel size in mm of the plane's own (u, v) pixels."""
        if self.vol is None:
            return (1.0, 1.0)
        return self.plane.spacing2d(self.vol.spacing)

    def screen_spacing(self) -> tuple[float, float]:
        """(horizontal, vertical) pixel size in mm as the pixels lie on the screen (turned)."""
        sx, sy = self.spacing2d()
        return (sy, sx) if self.turns % 2 else (sx, sy)

    def _plane_size(self) -> tuple[int, int]:
        rows, cols = self.plane.shape2d(self.doc.shape3())
        return cols, rows

    def to_display(self, u: float, v: float) -> tuple[float, float]:
        """Plane pixel (u, v) -> pixel of the image as shown (mirrored, then turned clockwise)."""
        w, h = self._plane_size()
        if self.mirror:
            u = w - 1 - u
        for _ in range(self.turns % 4):
            u, v, w, h = h - 1 - v, u, h, w
        return u, v

    def from_display(self, u: float, v: float) -> tuple[float, float]:
        """The inverse of :meth:`to_display`."""
        w, h = self._plane_size()
        if self.turns % 2:
            w, h = h, w
        for _ in range(self.turns % 4):
            u, v, w, h = v, w - 1 - u, h, w
        if self.mirror:
            u = w - 1 - u
        return u, v

    def set_orientation(self, turns: int, mirror: bool) -> None:
        """Turn / mirror the view keeping the image point at its centre where it is."""
        turns, mirror = int(turns) % 4, bool(mirror)
        if (turns, mirror) == (self.turns, self.mirror):
            return
        keep = None if (self.vol is None or self.fit_mode) else \
            self.screen_to_uv(QPointF(self.width() / 2, self.height() / 2))
        self.turns, self.mirror = turns, mirror
        self._oriented_cache = None
        if keep is None:
            self.fit()
            return
        du, dv = self.to_display(*keep)
        sx, sy = self.screen_spacing()
        self.center_mm = ((du + 0.5) * sx, (dv + 0.5) * sy)
        self.update()

    def rotate(self, quarter_turns: int) -> None:
        """Turn the shown image clockwise (negative: counter-clockwise) by quarter turns."""
        self.set_orientation(self.turns + quarter_turns, self.mirror)

    def flip(self, horizontal: bool = True) -> None:
        """Flip the shown image left-right (or top-bottom), as it is on the screen now.
        (A left-right flip of the turned image is a mirror of the plane turned the other way;
        top-bottom is that and a half turn.)"""
        self.set_orientation((2 if not horizontal else 0) - self.turns, not self.mirror)

    def orientation_text(self) -> str:
        """'Flipped, rotated 90°' for the corner ('' when shown as stored): the flip comes first."""
        parts = (["flipped"] if self.mirror else []) + ([f"rotated {90 * self.turns}°"] if self.turns else [])
        s = ", ".join(parts)
        return s[:1].upper() + s[1:]

    def image_size_mm(self) -> tuple[float, float]:
        """(width, height) in mm of the image as shown."""
        w, h = self._plane_size()
        if self.turns % 2:
            w, h = h, w
        sx, sy = self.screen_spacing()
        return w * sx, h * sy

    def fit(self):
        self.fit_mode = True
        if self.vol is None:
            self.update()
            return
        w_mm, h_mm = self.image_size_mm()
        W, H = max(1, self.width()), max(1, self.height())
        self.zoom = max(1e-3, min(W / w_mm, H / h_mm) * 0.97)
        self.center_mm = (w_mm / 2, h_mm / 2)
        self.update()

    def actual_size(self):
        """1:1 - one image pixel (horizontally) per screen pixel."""
        if self.vol is None:
            return
        sx, _ = self.screen_spacing()
        self.set_zoom(1.0 / sx)

    def zoom_factor(self) -> float:
        """Screen pixels per image pixel (horizontal)."""
        return self.zoom * self.screen_spacing()[0]

    def set_zoom(self, zoom: float, anchor: QPointF | None = None):
        zoom = float(np.clip(zoom, 0.02, 200.0))
        if anchor is not None:
            mx, my = self.screen_to_mm(anchor)
            self.zoom = zoom
            # keep the point under the anchor fixed
            self.center_mm = (mx - (anchor.x() - self.width() / 2) / zoom,
                              my - (anchor.y() - self.height() / 2) / zoom)
        else:
            self.zoom = zoom
        self.fit_mode = False
        self.update()

    def pan_by(self, dx: float, dy: float):
        cx, cy = self.center_mm
        self.center_mm = (cx - dx / self.zoom, cy - dy / self.zoom)
        self.fit_mode = False
        self.update()

    def screen_to_mm(self, p: QPointF) -> tuple[float, float]:
        cx, cy = self.center_mm
        return (cx + (p.x() - self.width() / 2) / self.zoom, cy + (p.y() - self.height() / 2) / self.zoom)

    def screen_to_uv(self, p: QPointF) -> tuple[float, float]:
        """Widget point -> the plane's pixel coordinates (u, v) (pixel centres on integers),
        through this view's turn / mirror."""
        mx, my = self.screen_to_mm(p)
        sx, sy = self.screen_spacing()
        return self.from_display(mx / sx - 0.5, my / sy - 0.5)

    def uv_to_screen(self, u: float, v: float) -> QPointF:
        u, v = self.to_display(u, v)
        sx, sy = self.screen_spacing()
        cx, cy = self.center_mm
        return QPointF(self.width() / 2 + ((u + 0.5) * sx - cx) * self.zoom,
                       self.height() / 2 + ((v + 0.5) * sy - cy) * self.zoom)

    def image_rect(self) -> QRectF:
        w_mm, h_mm = self.image_size_mm()
        cx, cy = self.center_mm
        x0 = self.width() / 2 - cx * self.zoom
        y0 = self.height() / 2 - cy * self.zoom
        return QRectF(x0, y0, w_mm * self.zoom, h_mm * self.zoom)

    def resizeEvent(self, ev):
        if self.fit_mode:
            self.fit()
        super().resizeEvent(ev)

    # ------------------------------------------------------------------ rendering
    def slice_loaded(self) -> bool:
        vol = self.vol
        if vol is None:
            return False
        if vol.loaded is None:
            return True
        if self.plane.axis == 0:
            return bool(vol.loaded[self.index])
        return bool(vol.loaded.any())

    def base_image(self) -> tuple[QImage, np.ndarray]:
        """The windowed slice as a QImage (RGB32) and its words, cached per slice/window/invert."""
        w = self.doc.window
        slab = self.slab if self.slab_active() else None
        loaded = None if (slab is None or self.vol.loaded is None) else int(self.vol.loaded.sum())
        key = (self.index, repr((w.center, w.width, w.function, w.source)), self.doc.invert, id(self.vol),
               slab, loaded)
        if self._img_cache is not None and self._img_cache[0] == self.index and self._img_cache[1] == key:
            return self._img_cache[2], self._img_cache[3]
        if slab is None:
            self._slab_image = None
            s = self.plane.extract(self.vol.array, self.index)
        else:
            self._slab_image = project(self.vol, self.plane, self.index, slab)
            s = self._slab_image.array
        # QImage reads rows of bytesPerLine from the buffer: a plane whose axes are swapped
        # (any reformat of a sagittal or coronal acquisition) comes as a transposed view, which
        # QImage would read past its end (a crash).  Row-major, always.
        words = np.ascontiguousarray(self.doc.renderer.render32(s, self.doc.window, self.doc.invert))
        h, wd = words.shape
        q = QImage(words.data, wd, h, words.strides[0], QImage.Format_RGB32)
        self._img_cache = (self.index, key, q, words)
        self._comp_cache = None
        return q, words

    def _overlay_key(self):
        return (self.index, tuple((id(l), l._version, l.visible) for l in self.doc.layers if l.is_raster))

    def composite_image(self) -> QImage:
        """Base slice with the visible raster overlays blended in, at image resolution: the
        overlays are coloured in numpy and blended by QPainter once, so the view scales a
        single image (one smooth scaled draw per frame, whatever the number of layers)."""
        q, words = self.base_image()
        if not (self.doc.show_overlays and len(self.doc.layers)):
            return q
        key = (self._img_cache[1], self._overlay_key())
        if self._comp_cache is not None and self._comp_cache[0] == key:
            return self._comp_cache[1]
        layers = [np.ascontiguousarray(lw) for lw in self.doc.layers.render_argb32(self.plane, self.index)]
        if not layers:
            self._comp_cache = (key, q, None)
            return q
        buf = words.copy()
        h, wd = buf.shape
        comp = QImage(buf.data, wd, h, buf.strides[0], QImage.Format_RGB32)
        p = QPainter(comp)
        for lw in layers:
            p.drawImage(0, 0, QImage(lw.data, lw.shape[1], lw.shape[0], lw.strides[0],
                                     QImage.Format_ARGB32_Premultiplied))
        p.end()
        self._comp_cache = (key, comp, buf)
        return comp

    def oriented_image(self) -> QImage:
        """:meth:`composite_image` mirrored and turned as this view shows it (exact pixel moves,
        no resampling), cached with it."""
        comp = self.composite_image()
        if not self.turns and not self.mirror:
            return comp
        key = (id(comp), comp.cacheKey(), self.turns, self.mirror)
        if self._oriented_cache is not None and self._oriented_cache[0] == key:
            return self._oriented_cache[1]
        from PySide6.QtGui import QTransform

        img = comp.flipped(Qt.Horizontal) if self.mirror else comp
        if self.turns:
            img = img.transformed(QTransform().rotate(90 * self.turns), Qt.FastTransformation)
        self._oriented_cache = (key, img, comp)  # the source kept alive with its key
        return img

    def paintEvent(self, ev):
        p = QPainter(self)
        vol = self.vol
        if vol is None or self.doc.window is None:
            p.fillRect(self.rect(), Qt.black)
            self._paint_empty(p)
            p.end()
            return
        target = self.image_rect()
        loaded = self.slice_loaded()
        if loaded:
            # black only around the (opaque) image
            full = QRectF(self.rect())
            inter = target.intersected(full)
            if inter.isEmpty():
                p.fillRect(self.rect(), Qt.black)
            else:
                for r in (QRectF(0, 0, full.width(), inter.top()),
                          QRectF(0, inter.bottom(), full.width(), full.height() - inter.bottom()),
                          QRectF(0, inter.top(), inter.left(), inter.height()),
                          QRectF(inter.right(), inter.top(), full.width() - inter.right(), inter.height())):
                    if r.width() > 0 and r.height() > 0:
                        p.fillRect(r.adjusted(0, 0, 1, 1), Qt.black)
            p.setRenderHint(QPainter.SmoothPixmapTransform, self.doc.smooth)
            p.drawImage(target, self.oriented_image())
        else:
            p.fillRect(self.rect(), Qt.black)
            p.setPen(QColor("#8b9099"))
            p.setFont(self._font)
            p.drawText(self.rect(), Qt.AlignCenter, "loading slice…")
        p.setRenderHint(QPainter.Antialiasing, True)
        if self.doc.show_overlays:
            self._paint_markers(p)
            self._paint_shapes(p)
        self._paint_measurements(p)
        for fn in self.extra_painters:
            fn(self, p)
        if self.mpr_mode and self.doc.show_crosshair:
            self._paint_crosshair(p)
        if self.doc.show_annotations:
            self._paint_annotations(p)
            if self.doc.show_overlays:
                self._paint_legend(p)
        if self.mpr_mode:
            self._paint_frame(p)
        p.end()
        if loaded and not self._first_painted:
            self._first_painted = True
            self.firstImagePainted.emit(time.perf_counter())

    def _paint_empty(self, p: QPainter):
        p.setPen(QColor("#5d6169"))
        f = QFont(self._font)
        f.setPointSizeF(12)
        p.setFont(f)
        p.drawText(self.rect(), Qt.AlignCenter, self.title or "")

    # -- markers -------------------------------------------------------------
    def _paint_markers(self, p: QPainter):
        shape3 = self.doc.shape3()
        tol = 0.5
        p.setFont(self._font)
        fm = QFontMetricsF(self._font)
        for layer in self.doc.layers.markers():
            for m, u, v in layer.near(self.plane, self.index, shape3, tolerance=tol):
                c = QColor(*m.color)
                pt = self.uv_to_screen(u, v)
                r = 12.0
                if m.radius_mm:
                    r = max(6.0, m.radius_mm * self.zoom)
                p.setPen(QPen(QColor(0, 0, 0, 160), 4))
                p.drawEllipse(pt, r, r)
                p.setPen(QPen(c, 2))
                p.drawEllipse(pt, r, r)
                p.drawLine(QPointF(pt.x() - r - 5, pt.y()), QPointF(pt.x() - r + 3, pt.y()))
                p.drawLine(QPointF(pt.x() + r - 3, pt.y()), QPointF(pt.x() + r + 5, pt.y()))
                text = m.text()
                if text:
                    tw = fm.horizontalAdvance(text)
                    box = QRectF(pt.x() + r + 6, pt.y() - r - fm.height(), tw + 8, fm.height() + 2)
                    p.fillRect(box, QColor(0, 0, 0, 170))
                    p.setPen(c)
                    p.drawText(box, Qt.AlignCenter, text)

    # -- shapes (an SR's regions, a presentation state's annotations, nodule diameters)
    def _paint_shapes(self, p: QPainter):
        shape3 = self.doc.shape3()
        for layer in self.doc.layers.shape_layers():
            p.save()
            p.setOpacity(max(0.0, min(1.0, layer.opacity)))
            for s, uv in layer.near(self.plane, self.index, shape3):
                col = QColor(*s.color)
                pts = [self.uv_to_screen(float(u), float(v)) for u, v in uv]
                p.setBrush(Qt.NoBrush)
                if s.kind == "text":  # a note: its text at its point
                    if s.label:
                        ann.label_box(self, p, pts[0], s.label, col, boxed=False)
                    continue
                if s.kind == "points" or len(pts) == 1:
                    for pe in (QPen(QColor(0, 0, 0, 170), 3.5), QPen(col, 1.6)):
                        p.setPen(pe)
                        for q in pts:  # a small cross: a point, not a region
                            p.drawLine(QPointF(q.x() - 5, q.y()), QPointF(q.x() + 5, q.y()))
                            p.drawLine(QPointF(q.x(), q.y() - 5), QPointF(q.x(), q.y() + 5))
                else:
                    path = QPainterPath()
                    path.addPolygon(QPolygonF(pts))
                    if s.closed:
                        path.closeSubpath()
                    line = Qt.DashLine if s.style == "dashed" else Qt.SolidLine
                    for pe in (QPen(QColor(0, 0, 0, 170), 3.5), QPen(col, 1.6, line)):
                        p.setPen(pe)
                        p.drawPath(path)
                if s.label:
                    anchor = QPointF(max(q.x() for q in pts) + 8, min(q.y() for q in pts))
                    ann.label_box(self, p, anchor, s.label, col, boxed=False)
            p.restore()

    # -- measurements ----------------------------------------------------------
    def visible_measurements(self) -> list[Measurement]:
        out = [m for m in self.doc.measurements if m.axis == self.plane.axis and m.index == self.index]
        if self._pending is not None:
            out.append(self._pending)
        return out

    def _paint_measurements(self, p: QPainter):
        fm = QFontMetricsF(self._font)
        p.setFont(self._font)
        for m in self.visible_measurements():
            sel = m is self.doc.selected or m is self._pending
            col = QColor("#ffb000") if sel else QColor("#4fd1ff")
            if m.kind in ann.OWN_KINDS:  # arrow, text, polygon, freehand
                ann.paint_item(self, p, m, col, sel)
                continue
            pts = [self.uv_to_screen(u, v) for u, v in m.points]
            if self._pending is m and self._cursor_uv is not None and not m.complete:
                pts.append(self.uv_to_screen(*self._cursor_uv))
            if len(pts) < 2:
                if pts:
                    p.setPen(QPen(col, 2))
                    p.drawEllipse(pts[0], 2.5, 2.5)
                continue
            shadow = QPen(QColor(0, 0, 0, 170), 3.5)
            pen = QPen(col, 1.6)
            path = QPainterPath()
            if m.kind == "ruler":
                path.moveTo(pts[0])
                path.lineTo(pts[1])
            elif m.kind == "angle":
                path.moveTo(pts[0])
                for q in pts[1:]:
                    path.lineTo(q)
            else:
                r = QRectF(pts[0], pts[1]).normalized()
                if m.kind == "ellipse":
                    path.addEllipse(r)
                else:
                    path.addRect(r)
            for pe in (shadow, pen):
                p.setPen(pe)
                p.setBrush(Qt.NoBrush)
                p.drawPath(path)
            if sel or m.kind in ("ruler", "angle"):
                p.setPen(QPen(col, 1.2))
                p.setBrush(QColor(0, 0, 0, 200))
                for q in pts[:N_POINTS[m.kind]]:
                    p.drawRect(QRectF(q.x() - 3, q.y() - 3, 6, 6))
            # label
            if m is self._pending:
                res = self._preview_result(m)
            else:
                res = m.result
            lines = (res.get("display_text") or res.get("text", [])) if res else []
            if not lines:
                continue
            if m.kind in ("ellipse", "rectangle"):
                r = QRectF(pts[0], pts[1]).normalized()
                anchor = QPointF(r.right() + 8, r.top())
            elif m.kind == "angle":
                anchor = QPointF(pts[1].x() + 10, pts[1].y() - 8)
            else:
                a = pts[0] if pts[0].x() > pts[1].x() else pts[1]
                anchor = QPointF(a.x() + 10, a.y() - 6)
            tw = max(fm.horizontalAdvance(t) for t in lines) + 10
            th = fm.height() * len(lines) + 6
            x = min(max(4.0, anchor.x()), self.width() - tw - 4)
            y = min(max(4.0, anchor.y()), self.height() - th - 4)
            p.setPen(Qt.NoPen)
            p.setBrush(QColor(0, 0, 0, 175))
            p.drawRoundedRect(QRectF(x, y, tw, th), 3, 3)
            p.setPen(col)
            for i, t in enumerate(lines):
                p.drawText(QPointF(x + 5, y + 3 + fm.ascent() + i * fm.height()), t)

    def _preview_result(self, m: Measurement) -> dict:
        pts = list(m.points)
        if self._cursor_uv is not None and not m.complete:
            pts.append(self._cursor_uv)
        if len(pts) < N_POINTS[m.kind]:
            return {}
        tmp = Measurement(m.kind, pts[:N_POINTS[m.kind]], m.axis, m.index, id=-1)
        return self.doc.compute_measurement(tmp)

    # -- crosshair -------------------------------------------------------------
    def _paint_crosshair(self, p: QPainter):
        shape3 = self.doc.shape3()
        u, v, _ = self.plane.from_voxel(self.doc.position, shape3)
        c = self.uv_to_screen(u, v)
        r = self.image_rect()
        colors = {pl.axis: QColor(PLANE_COLORS.get(pl.name, "#8b9099")) for pl in self.doc.planes}
        gap = 14
        # vertical line: the plane holding h_axis fixed; horizontal: v_axis fixed
        for axis, vertical in ((self.plane.h_axis, True), (self.plane.v_axis, False)):
            vertical = vertical != bool(self.turns % 2)  # a quarter turn lays the lines the other way
            col = QColor(colors.get(axis, QColor("#8b9099")))
            col.setAlpha(200)
            p.setPen(QPen(col, 1.2))
            if vertical:
                p.drawLine(QPointF(c.x(), r.top()), QPointF(c.x(), c.y() - gap))
                p.drawLine(QPointF(c.x(), c.y() + gap), QPointF(c.x(), r.bottom()))
            else:
                p.drawLine(QPointF(r.left(), c.y()), QPointF(c.x() - gap, c.y()))
                p.drawLine(QPointF(c.x() + gap, c.y()), QPointF(r.right(), c.y()))
            self._paint_slab_bounds(p, axis, vertical, col, r)

    def slab_bounds(self) -> tuple[int, int] | None:
        """First and last slice (along this view's axis) of its slab, or None."""
        if not self.slab_active():
            return None
        idx, _ = slab_indices(self.vol, self.plane, self.index, self.slab)
        return int(idx.min()), int(idx.max())

    def _paint_slab_bounds(self, p: QPainter, axis: int, vertical: bool, col: QColor, r: QRectF):
        """Dashed lines, beside the crosshair line of another MPR view, at the outermost slices
        of that view's slab (the -5 / +5 mm of its corner text): what its projection covers."""
        sib = next((s for s in self.slab_siblings if s is not self and s.plane.axis == axis), None)
        bounds = sib.slab_bounds() if sib is not None else None
        if bounds is None:
            return
        pen = QPen(col, 1.0, Qt.DashLine)
        p.setPen(pen)
        shape3 = self.doc.shape3()
        for k in set(bounds) - {int(self.doc.position[axis])}:
            kji = list(self.doc.position)
            kji[axis] = k
            u, v, _ = self.plane.from_voxel(kji, shape3)
            c = self.uv_to_screen(u, v)
            if vertical:
                p.drawLine(QPointF(c.x(), r.top()), QPointF(c.x(), r.bottom()))
            else:
                p.drawLine(QPointF(r.left(), c.y()), QPointF(r.right(), c.y()))

    def _paint_frame(self, p: QPainter):
        col = QColor(PLANE_COLORS.get(self.plane.name, "#8b9099"))
        p.setRenderHint(QPainter.Antialiasing, False)
        p.setPen(QPen(col, 3 if self.active else 1))
        p.setBrush(Qt.NoBrush)
        p.drawRect(QRectF(0.5, 0.5, self.width() - 1.5, self.height() - 1.5))

    # -- annotations --------------------------------------------------------------
    def slab_lines(self, compact: bool = False) -> list[str]:
        """The corner lines of a slab (drawn first and in amber: a projection must never pass
        for a slice): what it takes, or why this image has none."""
        if self.slab is None or self.vol is None:
            return []
        why = self.slab_refusal()
        if why:
            return [f"No {self.slab.name}: {why}"]
        if self.doc.window is not None:
            self.base_image()  # the projection of this slice and slab (cached): never a stale line
        si = self._slab_image
        if si is None:
            return []
        return [si.describe()] if compact else [si.describe(), "Values and ROI statistics: centre slice"]

    def annotation_text(self) -> dict[str, list[str]]:
        """Corner texts, also used by tests: keys 'tl', 'tr', 'bl', 'br', and 'em': the lines
        drawn in amber."""
        vol, doc = self.vol, self.doc
        if vol is None:
            return {"tl": [], "tr": [], "bl": [], "br": [], "em": set()}
        rec = vol.headers[min(self.index, len(vol.headers) - 1)] if (vol.headers and self.plane.axis == 0) \
            else (vol.headers[len(vol.headers) // 2] if vol.headers else None)
        g = (lambda kw, d="": (rec.get(kw, d) if rec is not None else d))
        compact = self.width() < 480 or (self.mpr_mode and self.plane.axis != 0)
        if compact:
            w = doc.window
            br = []
            if w is not None and not vol.is_color and w.source != "voilut":
                br.append("W {} L {}".format(*_fmt_window(w)))
            br.append(f"{self.zoom_factor():.2f}×" + ("  INV" if doc.invert else ""))
            if self.orientation_text():
                br.append(self.orientation_text())
            slab = self.slab_lines(compact=True)
            bl = slab + ([self._cursor_text] if self._cursor_text else [])
            # the study date stays: it tells a prior from the current study in a grid
            sdate = _fmt_date(doc.study.date if doc.study else g("StudyDate"))
            tl = [sdate] if (sdate and not (self.mpr_mode and self.plane.axis != 0)) else []
            return _printable_corners({"tl": tl, "tr": [f"{self.index + 1} / {self.n_slices}"], "bl": bl,
                                       "br": br, "em": set(slab)})
        tl = []
        pat = doc.patient
        name = _fmt_name(pat.name if pat else g("PatientName"))
        if name and charset_doubt(rec):
            name += " ⚠ charset"  # read in an undeclared or unknown set, or undecodable: may be wrong
        if name:
            tl.append(name)
        pid = pat.id if pat else g("PatientID")
        sex = pat.sex if pat else g("PatientSex")
        birth = pat.birth_date if pat else g("PatientBirthDate")
        st = doc.study
        age = age_text(g("PatientAge"), birth, st.date if st else g("StudyDate"))  # labelled, never guessed
        line = "  ".join(x for x in (f"ID {pid}" if pid else "", sex, age, dob_text(birth)) if x)
        if line:
            tl.append(line)
        sdate = _fmt_date(st.date if st else g("StudyDate"))
        sdesc = st.description if st else g("StudyDescription")
        if sdate or sdesc:
            tl.append("  ".join(x for x in (sdate, str(sdesc)) if x))
        tr = []
        ser = doc.series
        num = ser.number if ser else g("SeriesNumber")
        desc = vol.description or (ser.description if ser else "")
        if num not in (None, ""):
            tr.append(f"Se {num}: {desc}" if desc else f"Se {num}")
        elif desc:
            tr.append(desc)
        tr.append(f"{vol.modality}  {vol.array.shape[2]}×{vol.array.shape[1]}"
                  + (f"  {doc.stack_label}" if doc.stack_label else ""))
        if self.mpr_mode and self.plane.axis != 0:
            tr.append(f"{self.plane.name.capitalize()} {self.index + 1} / {self.n_slices}")
        else:
            label = "Fr" if vol.is_cine else "Im"
            line = f"{label} {self.index + 1} / {self.n_slices}"
            # the image's own number (what the PACS and a report cite) where it differs from
            # the position in the stack, which is in slice-position order (OHIF's "I: n (k/N)")
            inst = str(g("InstanceNumber", "") or "").strip()
            if (inst and inst != str(self.index + 1) and self.plane.axis == 0 and rec is not None
                    and getattr(rec, "frames", 1) <= 1):
                line += f"  (Inst {inst})"
            tr.append(line)
        slab = self.slab_lines()
        bl = list(slab)
        if vol.has_geometry:
            if self.plane.axis == 0:
                if vol.slice_positions is not None and self.index < len(vol.slice_positions):
                    bl.append(f"Pos {vol.slice_positions[self.index]:.1f} mm")
                th = g("SliceThickness")
                per_frame = getattr(vol, "slice_thicknesses", None)  # an enhanced object's frames
                if per_frame and self.index < len(per_frame) and per_frame[self.index] is not None:
                    th = per_frame[self.index]
                if th not in (None, ""):
                    bl.append(f"Thick {float(th):.2g} mm")
            else:
                sp = self.plane.slice_spacing(vol.spacing)
                bl.append(f"Pos {self.index * sp:.1f} mm  (step {sp:.2f} mm)")
        elif vol.is_cine and vol.frame_time_ms:
            bl.append(f"{1000.0 / vol.frame_time_ms:.0f} fps (FrameTime {vol.frame_time_ms:g} ms)")
        note = corner_note(vol.spacing_source, bool(getattr(vol, "calibrated_regions", None)))
        if note:  # lengths that are not patient mm say so where the image is
            bl.append(note)
        o = orientation(vol, self.plane, rec if self.plane.axis == 0 else None, rotate=self.turns,
                        flip_h=self.mirror, read_file=False)
        if o.labels is None and o.why_none != NOT_READ_YET:  # no letters: say why, never guess
            bl.append(f"No orientation letters: {o.why_none}")
        if self._cursor_text:
            bl.append(self._cursor_text)
        br = []
        w = doc.window
        if vol.is_color:
            pass
        elif w is not None and w.source == "voilut":
            br.append(f"VOI LUT: {w.name}")
        elif w is not None:
            br.append("W {}  L {}".format(*_fmt_window(w)) + (f"  {w.name}" if w.name else ""))
        br.append(f"Zoom {self.zoom_factor():.2f}×" + ("  INV" if doc.invert else ""))
        if self.orientation_text():
            br.append(self.orientation_text())
        return _printable_corners({"tl": tl, "tr": tr, "bl": bl, "br": br, "em": set(slab)})

    def _draw_text(self, p: QPainter, x: float, y: float, text: str, color=QColor("#e8e8e8")):
        # a dark backing tight to the line, then a drop shadow: a shadow alone leaves light
        # text on white pixels unreadable (tests/test_ui_corner_text.py checks the contrast)
        fm = QFontMetricsF(p.font())
        p.fillRect(QRectF(x - 2, y - fm.ascent() - 1, fm.horizontalAdvance(text) + 4, fm.height() + 2),
                   QColor(0, 0, 0, TEXT_BACKING_ALPHA))
        p.setPen(QColor(0, 0, 0, 230))
        p.drawText(QPointF(x + 1, y + 1), text)
        p.setPen(color)
        p.drawText(QPointF(x, y), text)

    def _paint_annotations(self, p: QPainter):
        p.setRenderHint(QPainter.Antialiasing, False)
        p.setRenderHint(QPainter.TextAntialiasing, True)
        p.setFont(self._font)
        fm = QFontMetricsF(self._font)
        lh = fm.height()
        m = 8.0
        W, H = self.width(), self.height()
        t = self.annotation_text()
        top = m + (lh + 4 if self.mpr_mode else 0)
        # the corner lines' backings as drawn: the heat-map legend keeps clear of them
        self.corner_boxes = boxes = []

        def corner(x, y, s, col=QColor("#e8e8e8")):
            self._draw_text(p, x, y, s, col)
            f = QFontMetricsF(p.font())
            boxes.append(QRectF(x - 2, y - f.ascent() - 1, f.horizontalAdvance(s) + 4, f.height() + 2))

        if self.mpr_mode:
            col = QColor(PLANE_COLORS.get(self.plane.name, "#cccccc"))
            f = QFont(self._font)
            f.setBold(True)
            p.setFont(f)
            corner(m, m + fm.ascent(), self.plane.name.upper(), col)
            p.setFont(self._font)
        maxw = W / 2 - m - 24
        for i, s in enumerate(t["tl"]):
            corner(m, top + fm.ascent() + i * lh, fm.elidedText(s, Qt.ElideRight, maxw))
        for i, s in enumerate(t["tr"]):
            s = fm.elidedText(s, Qt.ElideRight, maxw)
            corner(W - m - fm.horizontalAdvance(s), top + fm.ascent() + i * lh, s)
        for i, s in enumerate(reversed(t["bl"])):
            col = QColor(EMPHASIS) if s in t["em"] else QColor("#e8e8e8")
            s = fm.elidedText(s, Qt.ElideRight, maxw)
            corner(m, H - m - fm.descent() - i * lh, s, col)
        for i, s in enumerate(reversed(t["br"])):
            s = fm.elidedText(s, Qt.ElideRight, maxw)
            corner(W - m - fm.horizontalAdvance(s), H - m - fm.descent() - i * lh, s)
        # orientation letters: direction cosines, else PatientOrientation (projection images)
        hdrs = self.vol.headers
        rec = hdrs[min(self.index, len(hdrs) - 1)] if (hdrs and self.plane.axis == 0) else None
        o = orientation(self.vol, self.plane, rec, rotate=self.turns, flip_h=self.mirror,
                        read_file=False)  # never a file read while painting
        if o.why_none == NOT_READ_YET:  # read on a thread, then paint again
            read_later(rec, lambda: QMetaObject.invokeMethod(self, "update", Qt.QueuedConnection))
        lab = o.labels
        self._orientation_labels = lab  # what was painted (tests read it)
        if lab:
            p.setFont(self._font_orient)
            fo = QFontMetricsF(self._font_orient)
            col = QColor("#f0c060")
            self._draw_text(p, W / 2 - fo.horizontalAdvance(lab["top"]) / 2, top + fo.ascent(), lab["top"], col)
            self._draw_text(p, W / 2 - fo.horizontalAdvance(lab["bottom"]) / 2, H - m - fo.descent(),
                            lab["bottom"], col)
            self._draw_text(p, m, H / 2 + fo.ascent() / 2, lab["left"], col)
            self._draw_text(p, W - m - fo.horizontalAdvance(lab["right"]), H / 2 + fo.ascent() / 2,
                            lab["right"], col)
        self._annotation_lines = t

    def _paint_legend(self, p: QPainter):
        # issue 17: the heat-map legend sits in the margin beside the image (ui/radiology/heat_legend.py)
        from .heat_legend import paint_legend
        paint_legend(self, p)

    # ------------------------------------------------------------------ interaction
    def _hit_handle(self, pos: QPointF):
        for m in reversed(self.visible_measurements()):
            if m is self._pending:
                continue
            for i, (u, v) in enumerate(m.points):
                q = self.uv_to_screen(u, v)
                if abs(q.x() - pos.x()) <= HANDLE_PX and abs(q.y() - pos.y()) <= HANDLE_PX:
                    return m, i
        return None

    def _hit_measurement(self, pos: QPointF):
        best, bd = None, 8.0
        for m in self.visible_measurements():
            if m is self._pending or len(m.points) < min(2, N_POINTS[m.kind]):
                continue
            if m.kind in ann.OWN_KINDS:
                d = ann.hit_distance(self, m, pos)
                if d < bd:
                    best, bd = m, d
                continue
            pts = [self.uv_to_screen(u, v) for u, v in m.points]
            if m.kind in ("ruler", "angle"):
                for a, b in zip(pts, pts[1:]):
                    d = _seg_dist(pos, a, b)
                    if d < bd:
                        best, bd = m, d
            else:
                r = QRectF(pts[0], pts[1]).normalized()
                if r.adjusted(-4, -4, 4, 4).contains(pos):
                    best, bd = m, 0
        return best

    def _window_drag_start(self) -> tuple[float, float]:
        """The centre and width a W/L drag starts from.  A VOI LUT has none (NaN): the window
        of its input range (first mapped value .. first + n - 1, PS3.3 C.11.2.1.1) stands in."""
        w, vol = self.doc.window, self.vol
        if w.source == "voilut" and vol.voi_lut is not None:
            n = len(vol.voi_lut)
            return vol.voi_lut_first + n / 2, float(n)  # LINEAR: first -> 0, first + n - 1 -> 255
        if not (math.isfinite(w.center) and math.isfinite(w.width)):
            from imaging_assist import display
            w = display.auto_window(vol.array[self.doc.position[0]])
        return w.center, w.width

    def mousePressEvent(self, ev):
        self.activated.emit(self)
        if self.vol is None:
            return
        pos = ev.position()
        btn = ev.button()
        if btn == Qt.RightButton:
            self._drag = ("window", pos, *self._window_drag_start())
            return
        if btn == Qt.MiddleButton:
            self._drag = ("pan", pos)
            return
        if btn != Qt.LeftButton:
            return
        if ev.modifiers() & Qt.ShiftModifier and self._pending is None and self._pick(pos):
            return
        uv = self.screen_to_uv(pos)
        if self._pending is None:
            hit = self._hit_handle(pos)
            if hit is not None:
                self.doc.select(hit[0])
                ann.annotations_for(self.doc).begin_edit(hit[0])  # undoable
                self._drag = ("handle", hit[0], hit[1])
                return
        tool = self.tool
        if ann.press(self, ev, uv, tool):  # polygon, freehand, text; move in navigate
            return
        if tool in MEASURE_TOOLS:
            if self._pending is None:
                self._pending = Measurement(tool, [uv], self.plane.axis, self.index)
                self._drag = ("measure", pos)
            else:
                self._pending.points.append(uv)
                self._drag = ("measure", pos)
                if self._pending.complete:
                    self._finish_pending()
            self.update()
            return
        if tool == "navigate":
            m = self._hit_measurement(pos)
            if m is not None:
                self.doc.select(m)
                return
            self.doc.select(None)
            if self.mpr_mode:
                self._set_crosshair(uv)
                self._drag = ("cross", pos)
            else:
                self._drag = ("pan", pos)
        elif tool == "window":
            self._drag = ("window", pos, *self._window_drag_start())
        elif tool == "pan":
            self._drag = ("pan", pos)
        elif tool == "zoom":
            self._drag = ("zoom", pos, self.zoom, pos)

    def point_kji(self, pos: QPointF | None = None) -> tuple[float, float, float] | None:
        """A widget point (default: the last mouse position over the view) as continuous array
        coordinates (k, j, i) on this view's plane and slice, exactly through the view's
        geometry; None outside the image."""
        if self.vol is None:
            return None
        uv = self.screen_to_uv(pos) if pos is not None else self._cursor_uv
        if uv is None:
            return None
        shape3 = self.doc.shape3()
        kji = self.plane.to_voxel(uv[0], uv[1], self.slab_depth(uv), shape3)
        if not all(-0.5 <= x <= n - 0.5 for x, n in zip(kji, shape3)):
            return None
        return kji

    def slab_depth(self, uv) -> int:
        """The slice a point of this view lies on: the shown slice, or on a MIP / MinIP the
        slice holding the brightest / darkest voxel under it (what the reader sees there)."""
        if not self.slab_active():
            return self.index
        return depth_index(self.vol, self.plane, self.index, self.slab, uv[0], uv[1])

    def _pick(self, pos: QPointF | None = None) -> bool:
        kji = self.point_kji(pos)
        if kji is None:
            return False
        self.pointPicked.emit(self, kji)
        return True

    def _set_crosshair(self, uv):
        kji = self.plane.to_voxel(uv[0], uv[1], self.slab_depth(uv), self.doc.shape3())
        self.doc.set_position(kji)

    def mouseMoveEvent(self, ev):
        pos = ev.position()
        self._update_cursor(pos)
        d = self._drag
        if d is None:
            if self._pending is not None:
                self.update()
            return
        kind = d[0]
        if kind == "window":
            _, p0, c0, w0 = d
            dx, dy = pos.x() - p0.x(), pos.y() - p0.y()
            # steps in proportion to the window, so a window 0.5 wide on fractional values moves
            # as finely as a 400 HU one; integer values keep width >= 1 and a 20/300 centre step
            floating = self.vol.array.dtype.kind == "f"
            width = w0 * math.exp(dx / 250.0)
            width = width if floating else max(1.0, width)
            center = c0 + dy * (w0 if floating else max(w0, 20.0)) / 300.0
            self.doc.set_window(center, width, "Custom")
        elif kind == "pan":
            _, p0 = d
            self.pan_by(pos.x() - p0.x(), pos.y() - p0.y())
            self._drag = ("pan", pos)
        elif kind == "zoom":
            _, p0, z0, anchor = d
            self.set_zoom(z0 * math.exp(-(pos.y() - p0.y()) / 150.0), anchor)
        elif kind == "cross":
            self._set_crosshair(self.screen_to_uv(pos))
        elif kind == "handle":
            _, m, i = d
            m.points[i] = self.screen_to_uv(pos)
            ann.compute(self.doc, m)
            self.doc.measurementsChanged.emit()
        elif kind == "measure":
            self.update()
        elif kind in ("move", "freehand"):
            ann.drag(self, d, pos)

    def mouseReleaseEvent(self, ev):
        d = self._drag
        self._drag = None
        if d is None:
            return
        if ann.release(self, d, ev.position()):
            return
        if d[0] == "measure" and self._pending is not None:
            pos = ev.position()
            moved = (pos - d[1]).manhattanLength() > 4
            if moved and not self._pending.complete:
                self._pending.points.append(self.screen_to_uv(pos))
                if self._pending.complete:
                    self._finish_pending()
            self.update()

    def _finish_pending(self):
        m = self._pending
        self._pending = None
        if m is None:
            return
        pts = [self.uv_to_screen(u, v) for u, v in m.points]
        if m.kind != "angle" and (pts[0] - pts[1]).manhattanLength() < 3:
            self.update()
            return  # a click, not a measurement
        ann.annotations_for(self.doc).add(m)  # computed, undoable, saved

    def cancel_pending(self):
        self._pending = None
        self.update()

    def mouseDoubleClickEvent(self, ev):
        if ev.button() == Qt.LeftButton and self.vol is not None and ann.double_click(self, ev):
            return
        self.mousePressEvent(ev)

    def leaveEvent(self, ev):
        self._cursor_text = ""
        self._cursor_uv = None
        self.update()
        super().leaveEvent(ev)

    def enterEvent(self, ev):
        fw = QApplication.focusWidget()
        if not isinstance(fw, QLineEdit):
            self.setFocus(Qt.MouseFocusReason)
        super().enterEvent(ev)

    def focusInEvent(self, ev):
        self.activated.emit(self)
        super().focusInEvent(ev)

    def value_at(self, u: float, v: float):
        """(k, j, i) and the modality value at display coordinates, or None outside."""
        vol = self.vol
        if vol is None:
            return None
        shape3 = self.doc.shape3()
        k, j, i = (int(round(x)) for x in self.plane.to_voxel(round(u), round(v), self.index, shape3))
        if not (0 <= k < shape3[0] and 0 <= j < shape3[1] and 0 <= i < shape3[2]):
            return None
        if vol.loaded is not None and not vol.loaded[k]:
            return (k, j, i), None
        return (k, j, i), vol.array[k, j, i]

    def _update_cursor(self, pos: QPointF):
        if self.vol is None:
            return
        u, v = self.screen_to_uv(pos)
        self._cursor_uv = (u, v)
        hit = self.value_at(u, v)
        if hit is None:
            self._cursor_text = ""
            self.cursorInfo.emit("")
        else:
            (k, j, i), val = hit
            units = self.vol.units
            if val is None:
                vs = "…"
            elif np.ndim(val):
                vs = "RGB " + " ".join(str(int(c)) for c in val)
            else:
                fv = float(val)
                vs = (f"{fv:.0f}" if float(fv).is_integer() else f"{fv:.4g}") + (f" {units}" if units else "")
            si = self._slab_image if self.slab_active() else None
            if si is not None and val is not None and not np.ndim(val):
                r, c = int(round(v)), int(round(u))
                if 0 <= r < si.array.shape[0] and 0 <= c < si.array.shape[1]:
                    pv = float(si.array[r, c])
                    vs += f"  {si.slab.name} " + (f"{pv:.0f}" if pv.is_integer() else f"{pv:.4g}") + (
                        f" {units}" if units else "")
            self._cursor_text = f"({i}, {j})  {vs}"
            lps = ""
            if self.vol.has_geometry:
                x, y, z = self.vol.acquired_lps(k, j, i)  # each slice where it was acquired (uneven gaps)
                lps = f"   LPS ({x:.1f}, {y:.1f}, {z:.1f}) mm"
            self.cursorInfo.emit(f"x {i}  y {j}  slice {k + 1}   value {vs}{lps}")
        self.update()

    def wheelEvent(self, ev):
        if self.vol is None:
            return
        dy = ev.angleDelta().y() or ev.angleDelta().x()
        mods = ev.modifiers()
        if mods & Qt.ControlModifier:
            self.set_zoom(self.zoom * (1.15 ** (dy / 120.0)), ev.position())
            return
        self._wheel_accum += dy
        steps = int(self._wheel_accum / 120)
        if steps == 0:
            return
        self._wheel_accum -= steps * 120
        step = 5 if mods & Qt.ShiftModifier else 1
        # wheel towards the user (negative) goes to the next slice, as in most viewers
        self.scroll_by(-steps * step)

    def scroll_by(self, n: int):
        self.doc.set_index(self.plane.axis, self.index + n)

    def event(self, ev):
        # Backspace (last corner), Enter (close) and Esc (drop) while a polygon / freehand outline
        # is being drawn are the drawing's, not the window's shortcuts of the same keys (Delete
        # measurement, Navigate tool): accepting the override delivers them to keyPressEvent
        if (ev.type() == QEvent.ShortcutOverride and self._pending is not None
                and self._pending.kind in ("polygon", "freehand")
                and ev.key() in (Qt.Key_Backspace, Qt.Key_Return, Qt.Key_Enter, Qt.Key_Escape)
                and ev.modifiers() in (Qt.NoModifier, Qt.KeypadModifier)):
            ev.accept()
            return True
        return super().event(ev)

    def keyPressEvent(self, ev):
        k = ev.key()
        if self.vol is None:
            return super().keyPressEvent(ev)
        if getattr(self, "cine_keys", None) is not None and self.cine_keys(ev):  # cine keys (radiology/cine.py)
            return
        n = {Qt.Key_Up: -1, Qt.Key_Down: 1, Qt.Key_PageUp: -10, Qt.Key_PageDown: 10,
             Qt.Key_Left: -1, Qt.Key_Right: 1}.get(k)
        if n is not None:
            self.scroll_by(n)
            return
        if k == Qt.Key_Home:
            self.doc.set_index(self.plane.axis, 0)
            return
        if k == Qt.Key_End:
            self.doc.set_index(self.plane.axis, self.n_slices - 1)
            return
        if k == Qt.Key_N and not (ev.modifiers() & (Qt.ControlModifier | Qt.AltModifier)) and self._pick():
            return
        if k == Qt.Key_Escape and self._pending is not None:
            self.cancel_pending()
            return
        if ann.key(self, ev):  # Ctrl+Z / Ctrl+Y, Enter closes a polygon
            return
        super().keyPressEvent(ev)


def _seg_dist(p: QPointF, a: QPointF, b: QPointF) -> float:
    ax, ay, bx, by, px, py = a.x(), a.y(), b.x(), b.y(), p.x(), p.y()
    dx, dy = bx - ax, by - ay
    L = dx * dx + dy * dy
    t = 0.0 if L == 0 else max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / L))
    return math.hypot(px - (ax + t * dx), py - (ay + t * dy))
