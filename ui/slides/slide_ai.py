"""Slide models run from the AI panel on the open slide (issue 17, "Whole slides").

The AI panel (:class:`~imaging_assist_ui.ai.model_panel.ModelPanel`) hands over to
:class:`SlideRuns` while the slide page is shown (``panel.slide_runs``): the model list then
holds only the models whose card has a ``slide`` block (tile size and µm/px, e.g.
``path-lung-tissue``), Run tiles the open slide on a worker thread - the tissue tiles inside
the drawn region (the selected or last rectangle / polygon of the slide tools) or, without
one, the whole slide - with progress (tiles done / total, tiles/s, time left) and Cancel,
and the per-class heat maps and top tiles come back as overlay layers.

Engine calls only: :func:`~imaging_assist.slides.analysis.slide_spec`,
:class:`~imaging_assist.slides.analysis.TileModel` (the card's own preprocessing and the
per-tile OOD score), :func:`~imaging_assist.slides.detect_tissue`,
:func:`~imaging_assist.slides.regions.plan_region` / :func:`~imaging_assist.slides.plan_tiles`
and :func:`~imaging_assist.slides.run_tiles`.  Cancel is checked between batches of
``BATCH`` tiles (well under a second on a CPU); a cancelled run adds nothing.
"""

from __future__ import annotations

import html
import threading
import time

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QCheckBox

from imaging_assist.errors import UserError
from imaging_assist.models.matching import Match

from ..shared.theme import WARN_FG
from ..shared.workers import worker_thread

BATCH = 8  # tiles per model call: small enough that Cancel answers within a second on a CPU


def _eta(done: int, total: int, elapsed: float) -> str:
    if done <= 0 or elapsed <= 0:
        return ""
    rate = done / elapsed
    left = (total - done) / rate
    return f"{rate:.1f} tiles/s, about {left:.0f} s left" if left >= 1 else f"{rate:.1f} tiles/s"


class _SlideJob:
    """What the panel's Cancel button talks to (``panel.job.cancel()``)."""

    def __init__(self):
        self.event = threading.Event()
        self.thread: threading.Thread | None = None

    def cancel(self):
        self.event.set()

    def cancelled(self) -> bool:
        return self.event.is_set()


class _CancelGuard:
    """The model function with a cancel check before each forward: once Cancel is pressed the
    batches still in the reader's queue are not computed (zeros, discarded with the run), so
    the run ends after the one forward already under way."""

    def __init__(self, fn, job: _SlideJob, n_classes: int):
        self.fn, self.job, self.n = fn, job, n_classes
        self.accepts_uint8 = bool(getattr(fn, "accepts_uint8", False))

    def __call__(self, x):
        if self.job.cancelled():
            import torch

            return torch.zeros((len(x), self.n))
        return self.fn(x)


class _Signals(QObject):
    progress = Signal(int, int, int, float)   # token, done, total, elapsed s
    finished = Signal(int, str, object)       # token, "done" | "cancelled" | "error", payload


class SlideRuns(QObject):
    """The AI panel's slide branch.  ``panel``: the ModelPanel; ``page``: the SlidePage."""

    def __init__(self, panel, page):
        super().__init__(panel)
        self.panel = panel
        self.page = page
        self.token = 0
        self.job: _SlideJob | None = None
        self.last = None            # the last TileResult
        self.last_ood: dict = {}    # its out-of-distribution summary
        self.last_tiles: list = []  # level-0 (x, y, w, h) of the tiles that ran (tests)
        self._sig = _Signals(self)
        self._sig.progress.connect(self._on_progress)
        self._sig.finished.connect(self._on_finished)
        self.region_box = QCheckBox("Only inside the drawn region")
        self.region_box.setChecked(True)
        self.region_box.setToolTip("Analyse only the tiles inside the selected (or last drawn) rectangle "
                                   "or polygon of the slide tools; unticked or with no region: the whole slide")
        self.region_box.hide()
        lay = panel.layout()
        lay.insertWidget(max(0, lay.indexOf(panel.status)), self.region_box)
        panel.slide_runs = self
        self._tips = {w: w.toolTip() for w in (panel.method, panel.target)}

    # ------------------------------------------------------------------ state
    def active(self) -> bool:
        """The slide page is shown with a slide (the panel then works on the slide)."""
        win = self.page.win
        shown = win is None or win.pages.currentWidget() is self.page
        return bool(shown and self.page.slide is not None)

    def page_changed(self) -> None:
        """The slide page was shown or left: the panel lists what fits again."""
        p = self.panel
        self.region_box.setVisible(self.active())
        if not self.active():
            for w, tip in self._tips.items():
                w.setToolTip(tip)
        if p.running and not self.active() and self.job is not None:
            self.job.cancel()
        if p._catalog_loaded:
            p._rematch(select_best=True)
        else:
            self._head()
        p._update_enabled()

    def region(self):
        tools = getattr(self.page, "tools", None)
        if not self.region_box.isChecked() or tools is None:
            return None
        return tools.region()

    def _head(self):
        s = self.page.slide
        name = s.path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] if s is not None else ""
        self.panel.series_label.setText(f"Slide: {html.escape(name)} — slide models only")

    # ------------------------------------------------------------------ panel hooks
    def rematch(self, select_best: bool) -> None:
        """Matches for the slide: a card fits when it has a ``slide`` block."""
        from imaging_assist.slides.analysis import slide_spec

        p = self.panel
        p.facts = None
        p.matches = {}
        for e in p.entries:
            if not p._usable(e):
                continue
            ok = slide_spec(e.card) is not None
            p.matches[str(e.folder)] = Match(True, 2) if ok else Match(False, reasons=["not a slide model"])
        cur = p.current_entry()
        keep = str(cur.folder) if cur is not None and p.matches.get(str(cur.folder), Match(False)).ok else None
        best = p.best_match()
        if (select_best or keep is None) and best is not None:
            keep = str(best.folder)
        p._fill_tree(keep)
        from ..ai.model_panel import FOLDER_ROLE

        for n in range(p.tree.topLevelItemCount()):  # only the models that fit a slide
            it = p.tree.topLevelItem(n)
            m = p.matches.get(it.data(0, FOLDER_ROLE))
            it.setHidden(m is None or not m.ok)
        self._head()
        n = sum(1 for m in p.matches.values() if m.ok)
        if not n:
            p.series_label.setText(p.series_label.text() + " — none registered (a card with a \"slide\" block)")
        p._selection_changed()

    def update_enabled(self) -> None:
        p = self.panel
        e = p.current_entry()
        m = p.matches.get(str(e.folder)) if e is not None else None
        can = p._usable(e) and m is not None and m.ok and not p.running
        p.run_btn.setEnabled(bool(can))
        p.run_btn.setToolTip("Run the selected slide model on the open slide (the drawn region "
                             "when there is one)" if can else "Select a slide model")
        p.cancel_btn.setEnabled(p.state == "running")
        p.card_btn.setEnabled(e is not None and e.card is not None)
        for w in (p.tree, p.add_btn, p.refresh_btn, p.device, self.region_box):
            w.setEnabled(not p.running)
        p.method.setEnabled(False)  # heat maps are the tile probabilities, no Captum method
        p.target.setEnabled(False)
        for w in (p.method, p.target):
            w.setToolTip("Not used for slides: the heat maps are the tiles' class probabilities")
        p.override.setEnabled(False)

    # ------------------------------------------------------------------ running
    def run(self) -> bool:
        p = self.panel
        if p.running:
            return False
        e = p.current_entry()
        if e is None or e.card is None:
            p._show_error("Select a slide model first.")
            return False
        from imaging_assist.slides.analysis import slide_spec

        spec = slide_spec(e.card)
        if spec is None:
            p._show_error(f"{e.card.id} is not a slide model (its card has no \"slide\" block).")
            return False
        region = self.region()
        self.token += 1
        token = self.token
        job = _SlideJob()
        self.job = job
        p.job = job
        p._clear_outcome()
        p.state = "running"
        p.progress.setValue(0)
        where = f"inside the {region.kind}" if region is not None else "on the whole slide"
        p.status.setText(f"Starting {e.card.id} {where}…")
        p._update_enabled()
        args = (token, e.card, spec, self.page.slide.path, region.points if region is not None else None,
                p.device.currentData(), job)
        self._ctx = {"card": e.card, "region": region, "t0": time.perf_counter(), "path": self.page.slide.path}
        job.thread = worker_thread(self._work, "slide-model", args)
        job.thread.start()
        return True

    def _work(self, token, card, spec, path, region_pts, device, job: _SlideJob):
        try:
            import warnings

            from imaging_assist.inference.device import resolve_device
            from imaging_assist.slides import detect_tissue, open_slide, plan_tiles, run_tiles
            from imaging_assist.slides.analysis import TileModel
            from imaging_assist.slides.regions import plan_region

            model, load_s = self.panel._models.get(card)  # sha256 checked before loading
            if job.cancelled():
                self._emit(self._sig.finished, token, "cancelled", None)
                return
            dev = resolve_device(device or "auto")
            fn = TileModel(model, str(dev))
            t0 = time.perf_counter()
            warns: list[str] = []
            if spec["mpp_is_assumption"]:
                warns.append(f"the model's tile pixel size ({spec['mpp']:g} µm/px) is an assumption: "
                             f"{spec['mpp_note']}".rstrip(": "))
            with open_slide(path) as slide, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # recorded in plan.warnings / result.warnings
                warns += list(slide.warnings)
                tissue = detect_tissue(slide)
                if region_pts is not None:
                    plan = plan_region(slide, region_pts, spec["tile_px"], spec["mpp"], tissue_mask=tissue,
                                       tissue_threshold=spec["tissue_threshold"])
                else:
                    plan = plan_tiles(slide, spec["tile_px"], spec["mpp"], tissue_mask=tissue,
                                      tissue_threshold=spec["tissue_threshold"])
                if not len(plan):
                    raise UserError("no tissue tile to analyse " + ("inside the drawn region" if region_pts
                                                                    else "on this slide"))
                res = run_tiles(slide, _CancelGuard(fn, job, len(card.labels)), plan=plan, batch_size=BATCH,
                                cancel=job.event,
                                progress=lambda d, n: self._emit(self._sig.progress, token, d, n,
                                                                 time.perf_counter() - t0),
                                class_names=list(card.labels), top_k=3, as_tensor=True, device=fn.device)
            if res.cancelled or job.cancelled():
                self._emit(self._sig.finished, token, "cancelled", None)
                return
            warns += [w for w in res.warnings if w not in warns]
            ood = fn.ood_summary()
            from imaging_assist.monitoring.slide_log import record_slide_run  # issue 18: log row + audit event

            record_slide_run(model, path, res, ood=ood, run_s=time.perf_counter() - t0, device=str(fn.device),
                             n_warnings=len(warns), vendor=getattr(slide, "vendor", None), region=region_pts is not None)
            self._emit(self._sig.finished, token, "done", (res, warns, ood, load_s))
        except UserError as e:
            self._emit(self._sig.finished, token, "error", str(e))
        except Exception as e:  # noqa: BLE001 - one line in the panel
            self._emit(self._sig.finished, token, "error", f"{type(e).__name__}: {e}")

    @staticmethod
    def _emit(sig, *args):
        try:
            sig.emit(*args)
        except RuntimeError:  # the panel is gone (window closed)
            pass

    def _on_progress(self, token, done, total, elapsed):
        p = self.panel
        if token != self.token or p.state != "running":
            return
        p.progress.setValue(int(1000 * done / max(1, total)))
        rate = _eta(done, total, elapsed)
        p.status.setText(f"{done:,} / {total:,} tiles" + (f" — {rate}" if rate else ""))

    def _on_finished(self, token, status, payload):
        p = self.panel
        if token != self.token:
            return
        if p.job is not self.job:  # the panel already ended this run and said so (the slide changed:
            self.job = None         # ModelPanel._on_volume emitted runFinished("cancelled"))
            p._update_enabled()
            return
        self.job = None
        p.job = None
        if status == "done" and self.page.slide is not None and self.page.slide.path == self._ctx["path"]:
            res, warns, ood, _load_s = payload
            self._show(res, warns, ood)
        elif status == "done":
            p.state = "done"
            p.status.setText("Finished, but the slide changed meanwhile: nothing was added.")
        else:
            p.end_without_result(status, payload or "the slide model failed")
        p._update_enabled()
        p.runFinished.emit(status)

    def _show(self, res, warns, ood):
        p = self.panel
        card = self._ctx["card"]
        region = self._ctx["region"]
        elapsed = time.perf_counter() - self._ctx["t0"]
        self.last = res
        self.last_ood = ood
        self.last_tiles = [tuple(float(v) for v in r) for r in res.plan.rects0()]
        for layer in list(self.page.layers.layers):  # a new run of the same model replaces its layers
            if getattr(layer, "model_id", None) == card.id:
                self.page.layers.remove(layer)
        added = self.page.add_tile_result(res)
        for layer in added:
            object.__setattr__(layer, "model_id", card.id)
        p.result_layers = added
        # an out-of-distribution flag is said once, at the top of the results (not again here)
        p.results.setHtml(result_html(res, card, region, ood))
        p._show_warnings(warns)
        p.state = "done"
        p.progress.setValue(1000)
        p.status.setText(f"Done in {elapsed:.1f} s — {res.n_tiles:,} tiles at {res.tiles_per_s:.1f} tiles/s, "
                         f"{len(added)} overlay{'s' if len(added) != 1 else ''} added.")


def result_html(res, card, region, ood) -> str:
    esc = html.escape
    unit = "mm²" if res.area_unit == "mm2" else "px² (no MPP)"
    total = sum(res.areas.values())
    where = (f"inside the drawn {region.kind} ({region.name})" if region is not None else "whole slide")
    rows = "".join(
        f"<tr><td>{esc(k)}</td><td align=right>{v:.4g} {unit}</td>"
        f"<td align=right>{(100 * v / total if total > 0 else 0):.1f} %</td></tr>"
        for k, v in sorted(res.areas.items(), key=lambda kv: -kv[1]))
    out = [f"<p><b>{esc(card.name)}</b> v{esc(card.version)} — {where}</p>"]
    if ood.get("flagged"):  # said first: the areas below are then not to be relied on
        out.append(f"<p style='color:{WARN_FG}'><b>Outside what this model was trained on</b> ("
                   + esc("; ".join(ood.get("reasons", []))) + "): the maps and areas below are shown for "
                   "research only and should not be relied on.</p>")
    out += [f"<p>{res.n_tiles:,} tissue tiles of {res.plan.tile_px} px"
            + (f" at {res.mpp:.3g} µm/px" if res.mpp else "") + "</p>",
            "<p>Tissue area by most likely class:</p>",
            f"<table cellspacing=0 cellpadding=2>{rows}</table>",
            "<p>Heat maps: one layer per class (probability per tile, interpolated between tile centres; "
            "transparent below the layer's threshold, set in Overlays). Top tiles: markers named by class "
            "and tile position.</p>"]
    if ood.get("score") is not None and not ood.get("flagged"):
        out.append("<p>Out-of-distribution check: passed.</p>")
    out.append("<p><i>Research model, not for clinical use.</i></p>")
    return "".join(out)
