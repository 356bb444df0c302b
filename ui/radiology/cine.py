"""Cine for multi-frame images and series: play / pause, frame step, loop or bounce, frame
rate from the file (FrameTime, RecommendedDisplayFrameRate, CineRate: ``viewing.cine_rate``)
or 15 fps, adjustable; keys Space (play / pause), ← / → and ↑ / ↓ (pause and step one frame),
[ / ] (slower / faster; + / - too while playing, where they otherwise zoom).

``Cine`` drives the active viewport through ``view_getter()``; ``tick()`` is one timer step
(tests call it directly as a fake timer).  Playback stops when the played viewport's series
changes or another viewport becomes active.  ``CineBar`` is the small bar of controls; the
main window puts it in the bar under the views (``install``)."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QPushButton, QSpinBox, QToolButton, QWidget

from imaging_assist import viewing

MIN_FPS, MAX_FPS = 1, 120
RATE_STEPS = [1, 2, 3, 5, 8, 10, 12, 15, 20, 24, 25, 30, 40, 50, 60, 90, 120]


class Cine(QObject):
    """Plays the frames (or slices) of the view ``view_getter()`` returns."""

    stateChanged = Signal()

    def __init__(self, view_getter, parent=None):
        super().__init__(parent)
        self.view_getter = view_getter
        self.mode = "loop"       # "loop": last -> first; "bounce": reverse at either end
        self.direction = 1
        self.fps = float(viewing.DEFAULT_CINE_FPS)
        self.rate_source = "default"
        self._rate_vol = None    # the volume whose file rate was looked up
        self._view = None        # the view being played
        self.timer = QTimer(self)
        self.timer.setTimerType(Qt.PreciseTimer)
        self.timer.timeout.connect(self.tick)

    # ------------------------------------------------------------------ state
    @property
    def playing(self) -> bool:
        return self.timer.isActive()

    def _interval(self) -> int:
        return max(1, int(round(1000.0 / self.fps)))

    def play(self) -> bool:
        v = self.view_getter()
        if v is None or v.n_slices <= 1:
            return False
        self.rate_for(v.doc.volume)
        self._view = v
        self.timer.start(self._interval())
        self.stateChanged.emit()
        return True

    def pause(self):
        if self.timer.isActive():
            self.timer.stop()
            self.stateChanged.emit()
        self._view = None

    def toggle(self):
        self.pause() if self.playing else self.play()

    def set_mode(self, mode: str):
        if mode not in ("loop", "bounce"):
            raise ValueError(mode)
        self.mode = mode
        self.direction = 1 if mode == "loop" else self.direction
        self.stateChanged.emit()

    def set_fps(self, fps: float, source: str = "user"):
        fps = float(min(MAX_FPS, max(MIN_FPS, fps)))
        if source == "user":  # the reader's rate holds for this series (the file's is not looked up again)
            v = self.view_getter()
            self._rate_vol = v.doc.volume if v is not None else self._rate_vol
        if fps == self.fps and source == self.rate_source:
            return
        self.fps, self.rate_source = fps, source
        if self.timer.isActive():
            self.timer.setInterval(self._interval())
        self.stateChanged.emit()

    def faster(self):
        self.set_fps(next((r for r in RATE_STEPS if r > self.fps + 1e-6), MAX_FPS))

    def slower(self):
        self.set_fps(next((r for r in reversed(RATE_STEPS) if r < self.fps - 1e-6), MIN_FPS))

    def rate_for(self, vol):
        """Take the file's frame rate once per volume (a user change holds until the next one)."""
        if vol is None or vol is self._rate_vol:
            return
        self._rate_vol = vol
        fps, src = viewing.cine_rate(vol)
        self.set_fps(round(fps, 1), src)

    # ------------------------------------------------------------------ stepping
    def step(self, n: int = 1):
        """Pause and move ``n`` frames (clamped at the ends: a step never wraps)."""
        self.pause()
        v = self.view_getter()
        if v is None or v.n_slices <= 1:
            return
        v.doc.set_index(v.plane.axis, max(0, min(v.n_slices - 1, v.index + int(n))))

    def next_index(self, k: int, n: int) -> int:
        """The frame after ``k`` of ``n`` in the current mode (updates the bounce direction)."""
        if n <= 1:
            return 0
        if self.mode == "loop":
            return (k + 1) % n
        nxt = k + self.direction
        if nxt >= n or nxt < 0:
            self.direction = -self.direction
            nxt = k + self.direction
        return max(0, min(n - 1, nxt))

    def tick(self):
        """One timer step: the next frame of the played view."""
        v = self._view if self._view is not None else self.view_getter()
        if v is None or v.n_slices <= 1 or v.doc.volume is None:
            self.pause()
            return
        v.doc.set_index(v.plane.axis, self.next_index(v.index, v.n_slices))

    # ------------------------------------------------------------------ stops
    def series_changed(self, doc=None):
        """A viewport got another series: stop when it is the one playing (or any, doc None);
        the next play takes the new file's rate."""
        if self._view is not None and (doc is None or self._view.doc is doc):
            self.pause()
        self.direction = 1

    def view_changed(self, view):
        if self._view is not None and view is not self._view:
            self.pause()

    # ------------------------------------------------------------------ keys
    def handle_key(self, view, ev) -> bool:
        """Cine keys in a viewport (SliceView.keyPressEvent asks first); True when used."""
        k, mods = ev.key(), ev.modifiers()
        if mods & (Qt.ControlModifier | Qt.AltModifier | Qt.MetaModifier):
            return False
        if k == Qt.Key_BracketRight:
            self.faster()
            return True
        if k == Qt.Key_BracketLeft:
            self.slower()
            return True
        if self.playing and k in (Qt.Key_Right, Qt.Key_Down, Qt.Key_Left, Qt.Key_Up):
            self.step(1 if k in (Qt.Key_Right, Qt.Key_Down) else -1)
            return True
        return False


class CineBar(QWidget):
    """⏮ ▶/❚❚ ⏭  Loop|Bounce  N fps — bound to a Cine."""

    def __init__(self, cine: Cine, parent=None):
        super().__init__(parent)
        self.cine = cine
        self.prev_btn = QToolButton()
        self.prev_btn.setText("◀|")
        self.prev_btn.setToolTip("Previous frame (pauses)  ←")
        self.prev_btn.clicked.connect(lambda: cine.step(-1))
        self.play_btn = QPushButton("▶ Play")
        self.play_btn.setCheckable(True)
        self.play_btn.setToolTip("Cine: play / pause the frames or slices  (Space)")
        self.play_btn.toggled.connect(self._play_toggled)
        self.next_btn = QToolButton()
        self.next_btn.setText("|▶")
        self.next_btn.setToolTip("Next frame (pauses)  →")
        self.next_btn.clicked.connect(lambda: cine.step(1))
        self.mode = QComboBox()
        self.mode.addItem("Loop", "loop")
        self.mode.addItem("Bounce", "bounce")
        self.mode.setToolTip("Loop: last frame → first.  Bounce: back and forth")
        self.mode.activated.connect(lambda i: cine.set_mode(self.mode.itemData(i)))
        self.fps = QSpinBox()
        self.fps.setRange(MIN_FPS, MAX_FPS)
        self.fps.setValue(int(round(cine.fps)))
        self.fps.setSuffix(" fps")
        self.fps.valueChanged.connect(self._fps_edited)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(3)
        for w in (self.prev_btn, self.play_btn, self.next_btn, self.mode, self.fps):
            lay.addWidget(w)
        cine.stateChanged.connect(self.sync)
        self.sync()

    def _play_toggled(self, on: bool):
        if on and not self.cine.playing:
            if not self.cine.play():
                self.play_btn.setChecked(False)
        elif not on and self.cine.playing:
            self.cine.pause()
        self.sync()

    def _fps_edited(self, v: int):
        if int(round(self.cine.fps)) != v:
            self.cine.set_fps(v, "user")

    def sync(self):
        c = self.cine
        self.play_btn.blockSignals(True)
        self.play_btn.setChecked(c.playing)
        self.play_btn.blockSignals(False)
        self.play_btn.setText("❚❚ Pause" if c.playing else "▶ Play")
        self.fps.blockSignals(True)
        self.fps.setValue(int(round(c.fps)))
        self.fps.blockSignals(False)
        src = {"default": "no rate in the file: default", "user": "set by you"}.get(c.rate_source,
                                                                                    f"from the file's {c.rate_source}")
        self.fps.setToolTip(f"Cine speed ({src}); [ / ] slower / faster, + / - while playing")
        self.mode.setCurrentIndex(0 if c.mode == "loop" else 1)


class _Follow(QObject):
    """The step / mode controls show and hide with the play button (the slice bar shows it
    only for series with more than one image)."""

    def __init__(self, master, others):
        super().__init__(master)
        self.others = others
        master.installEventFilter(self)

    def eventFilter(self, obj, ev):
        if ev.type() in (QEvent.Show, QEvent.Hide):
            for w in self.others:
                w.setVisible(ev.type() == QEvent.Show)
        return False


def install(w) -> Cine:
    """Put the cine bar into the main window's slice bar in place of its plain play button and
    speed box (``w.play_btn`` / ``w.fps`` / ``w.cine_timer`` become the cine's), stop on series
    and viewport changes, and give the viewports the cine keys."""
    area = w.view_area
    cine = Cine(lambda: area.active, w)
    bar = CineBar(cine)
    sb = w.slice_bar
    old_play, old_fps = sb.play_btn, sb.fps
    sb.cine_timer.stop()
    lay = sb.layout()
    lay.insertWidget(0, bar)
    for old in (old_play, old_fps):
        lay.removeWidget(old)
        old.hide()
        old.deleteLater()
    sb.play_btn, sb.fps, sb.cine_timer = bar.play_btn, bar.fps, cine.timer
    w.play_btn, w.fps, w.cine_timer = bar.play_btn, bar.fps, cine.timer
    _Follow(bar.play_btn, [bar.prev_btn, bar.next_btn, bar.mode])
    bar.play_btn.setVisible(old_play.isVisibleTo(sb))
    docs = [w.doc] + [c.doc for c in area.grid.cells[1:]]
    def new_volume(d):
        cine.series_changed(d)
        if d.volume is None or area.active.doc is not d:
            return
        if d.volume.is_cine:
            cine.rate_for(d.volume)  # a cine shows its file's rate at once
        elif cine.rate_source not in ("user", "default"):
            # another file's rate does not carry over; this series' own is read when it plays
            cine.set_fps(viewing.DEFAULT_CINE_FPS, "default")
            cine._rate_vol = None

    for d in docs:
        d.volumeChanged.connect(lambda d=d: new_volume(d))
    area.activeViewChanged.connect(cine.view_changed)
    area.layoutChanged.connect(lambda mode: cine._view is not None and cine._view not in area.views() and cine.pause())
    for v in area.all_views():
        v.cine_keys = lambda ev, v=v: cine.handle_key(v, ev)
    # + / - change the rate while a cine plays (they zoom otherwise)
    for action, zoom, rate in ((w.a_zoom_in, 1.25, cine.faster), (w.a_zoom_out, 0.8, cine.slower)):
        action.triggered.disconnect()
        action.triggered.connect(lambda checked=False, z=zoom, r=rate: r() if cine.playing else w._zoom_step(z))
    w.cine = cine
    w.cine_bar = bar
    return cine
