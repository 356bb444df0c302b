"""AI model panel (a dock of the main window): pick a registered model, run it on the
shown series, read the per-finding scores against the card's operating thresholds, and get
the label maps and heat maps as overlay layers.

* The model list comes from :class:`imaging_assist.models.registry.Registry` (added
  folders, the user models folder, ``weights/``).  Every weights file is hashed in the
  background and shown as ✓ / ✗ with the reason.  Models whose card fits the series
  (modality, body part, 2D/3D, units - :func:`imaging_assist.models.matching.match_card`) are marked ★ and
  the best one is selected; otherwise the choice is manual.
* Runs go through the engine's jobs API (:func:`imaging_assist.inference.jobs.submit`) on a
  worker thread; its progress callbacks and the outcome reach the GUI thread through Qt
  signals (:class:`_Bridge`), so the window never blocks.  Cancel is cooperative (checked
  between sliding windows / slice batches).
* Nothing here imports torch at start-up: the catalogue (registry + device probe, which
  import torch) is built on a thread the first time the panel is shown (or on ``refresh``).
* Errors (invalid card, sha256 mismatch, input that does not fit) are one line in the
  panel; unexpected exceptions are logged and shown as one line too.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import (QApplication, QComboBox, QFileDialog, QFormLayout, QHBoxLayout,
                               QCheckBox, QHeaderView, QLabel, QProgressBar, QPushButton, QSizePolicy,
                               QTextBrowser, QToolButton, QTreeWidget, QTreeWidgetItem,
                               QVBoxLayout, QWidget)

from imaging_assist.errors import UserError
from imaging_assist.layers import LABEL_PALETTE, HeatmapLayer, LabelLayer

from imaging_assist.models.matching import Match, match_card, series_facts

from .model_support import (EXPLAIN_CHOICES, METHOD_TITLES, decision_text, esc, plain_tip, heat_display, heat_text,
                            key_slice, one_line, operating_point_text, size_lines, timings_text)
from ..shared.theme import ACCENT, ERROR_FG, MUTED, WARN_FG
from ..monitor.feedback_box import attach_monitoring
from ..radiology.series_results import (drop_model, keep_outcome, last_outcome, restore_outcome,
                                        series_key)
from ..shared.units import spacing_note
from ..shared.workers import worker_thread

log = logging.getLogger(__name__)

FOLDER_ROLE = Qt.UserRole + 1
OK_COLOR = "#7bd88f"
POSITIVE_COLOR = "#ff9a8a"
NEGATIVE_COLOR = "#8fd19e"


def run_inference(model, volume, options, progress):
    """The engine call, at module level so that tests can wrap it."""
    from imaging_assist.inference.pipelines import run_model

    return run_model(model, volume, options, progress=progress)


def _weights_stamp(card) -> tuple:
    out = []
    for w in card.weights:
        try:
            st = os.stat(Path(card.folder) / w.file)
            out.append((w.file, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((w.file, None, None))
    return (str(card.folder), card.id, tuple(out))


class _ModelCache:
    """Loaded networks, by folder + weights-file stamps: a replaced file is verified again."""

    def __init__(self, size: int = 2):
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.size = size

    def get(self, card):
        key = _weights_stamp(card)
        with self._lock:
            m = self._d.get(key)
            if m is not None:
                self._d.move_to_end(key)
                return m, 0.0
        from imaging_assist.models.loaders import load_model

        t = time.perf_counter()
        m = load_model(card, "cpu")  # verifies every sha256 before deserialising
        with self._lock:
            self._d[key] = m
            while len(self._d) > self.size:
                self._d.popitem(last=False)
        return m, time.perf_counter() - t

    def clear(self):
        with self._lock:
            self._d.clear()


class _Bridge(QObject):
    """Worker threads emit these; Qt delivers them on the GUI thread (queued)."""

    catalog = Signal(int, object, object, str)  # token, entries, devices, error
    verified = Signal(int, str, object)  # token, folder, [VerifyResult] or error text
    progress = Signal(int, float, str)  # run token, fraction, message
    finished = Signal(int, str, object, float)  # run token, status, result/error, load seconds
    rejected = Signal(str, str)  # folder, why: a run found weights that no longer match the card


def _emit(signal, *args) -> None:
    try:
        signal.emit(*args)
    except RuntimeError:  # the panel was deleted (window closed) while the thread ran
        pass


def _probe_devices() -> list[tuple[str, str | None]]:
    import torch

    from imaging_assist.inference.device import resolve_device

    auto = resolve_device("auto").type
    out = [(f"Auto ({auto.upper()})", None), ("CPU", "cpu")]
    if torch.cuda.is_available():
        try:
            name = torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001 - the name is cosmetic
            name = "GPU"
        out.append((f"CUDA — {name}", "cuda"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append(("Apple MPS", "mps"))
    return out


def _catalog_worker(token: int, bridge: _Bridge, verify_cache: dict) -> None:
    entries, devices, err = [], None, ""
    try:
        from imaging_assist.models.registry import Registry

        entries = Registry().entries()
    except UserError as e:
        err = one_line(e)
    except Exception as e:  # noqa: BLE001 - shown as one line, details in the log
        log.debug("listing the models failed", exc_info=True)  # shown in the panel as one line
        err = f"cannot list the models: {type(e).__name__}: {one_line(e)}"
    try:
        devices = _probe_devices()
    except Exception:  # noqa: BLE001 - keep Auto/CPU
        log.debug("device probe failed", exc_info=True)
    _emit(bridge.catalog, token, entries, devices, err)
    for e in entries:
        if e.card is None or e.shadowed_by:
            continue
        key = _weights_stamp(e.card)
        res = verify_cache.get(key)
        if res is None:
            try:
                from imaging_assist.models.loaders import verify

                res = verify(e.card)
            except UserError as ex:
                res = one_line(ex)
            except Exception as ex:  # noqa: BLE001
                res = f"{type(ex).__name__}: {one_line(ex)}"
            verify_cache[key] = res
        _emit(bridge.verified, token, str(e.folder), res)


def _run_job(card, volume, settings: dict, token: int, bridge: _Bridge, models: _ModelCache,
             progress):
    """Worker: verify + load (cached), run, and report the outcome through the bridge."""
    from imaging_assist.inference.jobs import Cancelled

    from imaging_assist.models.errors import WeightsMismatchError

    def load(c):
        try:
            return models.get(c)
        except WeightsMismatchError as e:  # changed since the panel's check: its ✓ must go too
            _emit(bridge.rejected, str(c.folder), one_line(e))
            raise

    status, payload, load_s, err = "error", None, 0.0, None
    try:
        from imaging_assist.explain.methods import ExplainConfig
        from imaging_assist.inference.pipelines import RunOptions

        progress(0.0, "checking the weights (sha256) and loading the model…")
        model, load_s = load(card)
        progress.check()
        method = settings.get("method")
        opts = RunOptions(device=settings.get("device"),
                          explain=ExplainConfig(method) if method else None,
                          explain_labels=settings.get("labels"))
        region = method is not None and getattr(card, "explanation_region", None) is not None
        res = run_inference(model, volume, opts, progress.stage(0.03, 0.9 if region else 0.98))
        from imaging_assist.inference.checks import withhold_overridden

        # before anything shows the result (the feedback box read a positive under "Decisions withheld")
        withhold_overridden(res, settings.get("override_reasons") or [])
        if region:  # heat-map mass inside the card's region (e.g. the lungs), engine-side
            from imaging_assist.explain.regions import RegionExplainer

            progress(0.9, f"segmenting the {card.explanation_region.name}…")
            RegionExplainer(card, load=lambda c: load(c)[0], device=settings.get("device")) \
                .apply(res, volume, progress.stage(0.9, 0.98))
        progress(0.98, "preparing the overlays…")
        layers, notes = build_layers(res, card)  # numpy work stays off the GUI thread
        html = result_html(res, card, load_s, override=settings.get("override_reasons") or [])
        progress.check()  # Cancel pressed after the engine's last check: no result
        payload = (res, {"layers": layers, "notes": notes, "html": html})
        status = "done"
    except Cancelled as e:
        status, err = "cancelled", e
    except UserError as e:
        payload, err = one_line(e), e
    except Exception as e:  # noqa: BLE001 - never a traceback in the panel
        log.debug("model run failed", exc_info=True)  # shown in the panel as one line
        payload, err = f"{type(e).__name__}: {one_line(e)}", e
    _emit(bridge.finished, token, status, payload, float(load_s))
    if err is not None:
        raise err  # keeps Job.status honest ("cancelled" / "failed")
    return payload


def build_layers(res, card):
    """Overlay layers of a result: label map -> LabelLayer with the card's names, each heat map
    -> HeatmapLayer on the volume grid (display range from :func:`heat_display`)."""
    layers, notes = [], []
    if card.task == "segmentation" and getattr(res, "label_map", None) is not None:
        names = {i: n for i, n in enumerate(card.labels) if i > 0}
        layers.append(LabelLayer(f"{card.id}: segmentation", res.label_map, names=names,
                                 opacity=0.45))
        layers[-1].model_id = card.id  # plain attribute: which model made it (re-runs replace)
    for hm in res.heatmaps:
        vmin, vmax, thr, note = heat_display(hm.array, hm.method)
        title = METHOD_TITLES.get(hm.method, hm.method)
        layer = HeatmapLayer(f"{title}: {hm.label}", hm.array, vmin=vmin, vmax=vmax, threshold=thr,
                             method=title)  # inferno, fading (imaging_assist.colormaps)
        layer.model_id = card.id
        from imaging_assist.explain.flags import heatmap_flags  # explain/ imports torch: not at start-up

        layer.set_flags(heatmap_flags(hm, res, card))  # issue 17: hidden with the reason (explain/flags.py)
        if layer.flags:  # said where the reader looks first (the panel's warnings), not only in Overlays
            notes.append(f"the {title} map of {hm.label} is hidden: {layer.flags[0]}"
                         + (f" (+{len(layer.flags) - 1} more)" if len(layer.flags) > 1 else "")
                         + "; tick it in Overlays to show it")
        layers.append(layer)
        if note == "nothing positive to show":
            notes.append(f"the {title} map of {hm.label} has no positive values: nothing is drawn")
    er = getattr(res, "explanation_region", None)
    if getattr(res, "region_map", None) is not None and er:
        names = {i + 1: n for i, n in enumerate(er.get("labels", []))}
        layer = LabelLayer(f"{er['model']}: {er['name']}", res.region_map, names=names, opacity=0.35,
                           mode="outline")
        layer.model_id = card.id
        layers.append(layer)
    return layers, notes


def _findings_html(out: list, res, card, withheld: str, p: str, mut: str) -> None:
    """Most likely class first; decisions as models.operating_point words them ("" or why
    the decisions are withheld)."""
    from imaging_assist.models.operating_point import decide_item, operating_point_text

    probs = {k: float(v) for k, v in res.probabilities.items()}
    dec = decide_item(card, probs, withheld)
    by_label = {x["label"]: x for x in dec["labels"]}
    for lab in dec["ranking"]:
        x = by_label.get(lab)
        d = (res.decisions or {}).get(lab)
        if x is None or d is None:
            head, _, rest = decision_text(lab, probs[lab], None).partition(" ")
            out.append(f"{p}<b>{esc(head)}</b> <span style='{mut}'>{esc(rest)}</span></p>")
        elif x["state"] == "withheld":
            out.append(f"{p}<span style='{mut}'>{esc(lab)} {probs[lab]:.3f} · decision withheld "
                       f"({esc(withheld)})</span></p>")
        else:
            text = decision_text(lab, probs[lab], d)  # "label p ≥ t → positive"
            head, _, rest = text.partition(" ")
            verdict = rest.rsplit(" ", 1)[-1]
            body = rest[: -len(verdict)]
            if x["state"] == "review":  # a rule-out threshold under a more probable class
                verdict, col = "above rule-out threshold: review", WARN_FG
            else:
                col = POSITIVE_COLOR if x["state"] == "positive" else NEGATIVE_COLOR
            op = operating_point_text(x["operating_point"])
            out.append(f"{p}<b>{esc(head)}</b> {esc(body)}<b style='color:{col}'>{esc(verdict)}</b>"
                       + (f" <span style='{mut}'>({'test: ' if x['operating_point'].get('test') else ''}"
                          f"{esc(op)})</span>" if op else "") + "</p>")


def result_html(res, card, load_s, override: list[str] | None = None) -> str:
    """The results as HTML: findings against the thresholds, sizes, heat maps, timings.

    Issue 14: findings most likely class first, each decision with the card's independent
    test-split figures (models/operating_point.py); a low rule-out threshold reads "review";
    a research override withholds every decision (probabilities greyed); a segmentation
    is checked against the card's quality_checks (inference/quality.py)."""
    mut = f"color:{MUTED}"
    p = "<p style='margin:2px 0'>"
    out = [f"<p style='margin:0 0 2px 0'><b>{esc(card.name)}</b></p>",
           f"<p style='margin:0 0 6px 0; {mut}'>{esc(card.id)} {esc(card.version)} · research model, "
           f"<b style='color:{ERROR_FG}'>not for clinical use</b></p>"]

    def section(title):
        out.append(f"<p style='margin:8px 0 2px 0; {mut}; font-weight:600'>{esc(title)}</p>")

    if override:
        out.append(f"{p}<b style='color:{WARN_FG}'>Research override: the model card does not fit this "
                   f"series ({esc('; '.join(override))}). Decisions withheld.</b></p>")
    ood = getattr(res, "ood", None) or {}  # issue 14: image unlike the training data (validation.ood)
    if ood.get("flagged"):
        why = "; ".join(ood.get("reasons") or [])
        out.append(f"{p}<b style='color:{WARN_FG}'>⚠ Outside what this model was trained on</b>"
                   + (f" <span style='color:{WARN_FG}'>({esc(why)})</span>" if why else "")
                   + (" · decisions withheld" if card.task == "classification" else "") + "</p>")
    if card.task == "classification":
        section("Findings")
        withheld = ("research override" if override else
                    "outside what this model was trained on" if ood.get("flagged") else "")
        if res.probabilities:
            _findings_html(out, res, card, withheld, p, mut)
        for lab in ([] if res.probabilities else res.labels):
            if lab not in res.probabilities:
                continue
            pr = float(res.probabilities[lab])
            d = res.decisions.get(lab)
            text = decision_text(lab, pr, d)
            head, _, rest = text.partition(" ")
            if d is None:
                body = esc(rest)
                out.append(f"{p}<b>{esc(head)}</b> <span style='{mut}'>{body}</span></p>")
                continue
            verdict = "positive" if d["positive"] else "negative"
            col = POSITIVE_COLOR if d["positive"] else NEGATIVE_COLOR
            body = esc(rest[: -len(verdict)])
            op = operating_point_text(d)
            out.append(f"{p}<b>{esc(head)}</b> {body}<b style='color:{col}'>{verdict}</b>"
                       + (f" <span style='{mut}'>({esc(op)})</span>" if op else "") + "</p>")
        if res.per_slice:
            top = res.top_label
            k = max(range(len(res.per_slice)), key=lambda n: res.per_slice[n][top])
            how = "maximum" if res.aggregation.startswith("max") else "mean"
            out.append(f"<p style='margin:2px 0; {mut}'>{how} over {len(res.per_slice)} slices; "
                       f"{esc(top)} highest on <a href='slice:{k}'>image {k + 1}</a></p>")
    else:
        section("Structures")
        lines = size_lines(res)
        pal = {n: LABEL_PALETTE[(i - 1) % len(LABEL_PALETTE)] for i, n in enumerate(card.labels) if i > 0}
        lm = getattr(res, "label_map", None)
        per_slice = None
        if lm is not None and lm.shape[0] > 1:  # voxels of each label on each slice
            per_slice = np.stack([np.bincount(s.ravel(), minlength=len(card.labels))[:len(card.labels)]
                                  for s in lm])
        for (lab, _), line in zip(res.voxel_counts.items(), lines):
            r, g, b = pal.get(lab, (200, 200, 200))
            link = ""
            if per_slice is not None and res.voxel_counts.get(lab) and lab in card.labels:
                k = int(per_slice[:, card.labels.index(lab)].argmax())
                link = f" · largest on <a href='slice:{k}'>image {k + 1}</a>"
            out.append(f"{p}<span style='color:rgb({r},{g},{b})'>■</span> {esc(line)}{link}</p>")
        if not lines:
            out.append(f"{p}<span style='{mut}'>no structures</span></p>")
        if lm is not None and getattr(card, "quality_checks", None) is not None:
            from imaging_assist.inference.quality import check_segmentation

            q = getattr(res, "quality", None) or check_segmentation(lm, card.labels, card.quality_checks)
            col = OK_COLOR if q["passed"] else ERROR_FG
            out.append(f"{p}<b style='color:{col}'>{esc(q['text'])}</b></p>")
    if res.heatmaps:
        section("Heat maps")
        for hm in res.heatmaps:
            k = key_slice(hm.array, res, hm.label)
            link = f" · see <a href='slice:{k}'>image {k + 1}</a>" if hm.array.shape[0] > 1 else ""
            signed = (f" <span style='{mut}'>(positive evidence shown)</span>"
                      if hm.method in ("integrated_gradients", "occlusion") else "")
            out.append(f"{p}{esc(heat_text(hm))}{signed}{link}</p>")
            from imaging_assist.explain.flags import heatmap_flags

            for why in heatmap_flags(hm, res, card):  # issue 17: why the map is hidden
                out.append(f"{p}<b style='color:{WARN_FG}'>⚑ Map flagged: {esc(why)}.</b> <span style='{mut}'>"
                           "Hidden until you tick it in Overlays.</span></p>")
        er = getattr(res, "explanation_region", None)
        if er:
            from imaging_assist.explain.regions import region_text

            col = WARN_FG if er.get("error") else ACCENT
            text = region_text(er)
            if er.get("areas") and not er.get("error"):  # the areas name their pixel size's source
                text += " " + spacing_note(er.get("spacing_source") or "none")
            out.append(f"{p}<span style='color:{col}'>◧</span> {esc(text)}</p>")
    section("Run")
    out.append(f"<p style='margin:2px 0; {mut}'>{esc(timings_text(res, load_s))}</p>")
    return "".join(out)


class ModelPanel(QWidget):
    """The dock's widget.  ``add_layer`` is how results reach the viewer (the main window's
    ``add_layer``, which also shows the Overlays panel)."""

    runFinished = Signal(str)  # "done", "cancelled" or "error"
    catalogReady = Signal()

    def __init__(self, doc, add_layer=None, parent=None):
        super().__init__(parent)
        self.doc = doc
        self._add_layer = add_layer or doc.add_layer
        self.entries: list = []
        self.matches: dict[str, Match] = {}
        self.verify_state: dict[str, tuple[bool | None, str]] = {}
        self.facts = None
        self.state = "idle"  # idle, listing, running, cancelling, done, cancelled, error
        self.job = None
        self.last_result = None
        self.last_error = ""
        self.result_layers: list = []
        self._sticky_error = False
        self._reselect: tuple[str, str] | None = None  # (model id, why) after a version change
        self._run_token = 0
        self._cat_token = 0
        self._catalog_loaded = False
        self._list_error = ""
        self._run_ctx = None
        self._method_auto_switched = False
        self._models = _ModelCache()
        self._verify_cache: dict = {}
        self._bridge = _Bridge(self)
        self._bridge.catalog.connect(self._on_catalog)
        self._bridge.verified.connect(self._on_verified)
        self._bridge.progress.connect(self._on_progress)
        self._bridge.finished.connect(self._on_finished)
        self._bridge.rejected.connect(self._on_rejected)
        self.card_dialog = None
        self.slide_runs = None  # ui/slides/slide_ai.SlideRuns: the slide branch while a slide is shown
        self._build()
        attach_monitoring(self)  # issue 18: reader feedback under the results, Monitor, alert at start
        doc.volumeChanged.connect(self._on_volume)
        doc.loadFinished.connect(self._update_enabled)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self._quit)
        self._update_enabled()

    # ================================================================== building
    def _build(self):
        self.series_label = QLabel("No series open.")
        self.series_label.setWordWrap(True)
        # rich text always: every head is built as HTML with the series' and the slide's names
        # escaped (a slide "H&E.svs" shows as named, not "H&amp;E.svs")
        self.series_label.setTextFormat(Qt.RichText)
        self.series_label.setStyleSheet(f"color: {MUTED};")

        self.tree = QTreeWidget()
        self.tree.setColumnCount(5)
        self.tree.setHeaderLabels(["Model", "Task", "Modality", "Ver.", "✓"])
        self.tree.setRootIsDecorated(False)
        self.tree.setUniformRowHeights(True)
        self.tree.setAlternatingRowColors(True)
        self.tree.setFixedHeight(96)
        self.tree.setTextElideMode(Qt.ElideMiddle)
        h = self.tree.header()
        h.setStretchLastSection(False)
        h.setSectionResizeMode(0, QHeaderView.Stretch)
        for c in (1, 2, 3, 4):
            h.setSectionResizeMode(c, QHeaderView.ResizeToContents)
        self.tree.currentItemChanged.connect(lambda *_: self._selection_changed())

        self.details = QLabel("")
        self.details.setWordWrap(True)
        self.details.setTextFormat(Qt.RichText)
        self.details.setTextInteractionFlags(Qt.TextSelectableByMouse)

        self.card_btn = QPushButton("Model card…")
        self.card_btn.setToolTip("Intended use, training data, metrics, thresholds and licence")
        self.card_btn.clicked.connect(self.show_card)
        self.add_btn = QPushButton("Add folder…")
        self.add_btn.setToolTip("Add a folder of models (or one model folder / MONAI bundle) "
                                "to the list, like `imaging-assist models add`")
        self.add_btn.clicked.connect(self._add_folder_dialog)
        self.refresh_btn = QToolButton()
        self.refresh_btn.setText("↻")
        self.refresh_btn.setToolTip("Read the model folders again and re-check the weights")
        self.refresh_btn.clicked.connect(lambda: self.refresh(rehash=True))
        brow = QHBoxLayout()
        brow.setContentsMargins(0, 0, 0, 0)
        brow.addWidget(self.card_btn)
        brow.addWidget(self.add_btn)
        brow.addStretch(1)
        brow.addWidget(self.refresh_btn)

        self.device = QComboBox()
        self._set_devices([("Auto", None), ("CPU", "cpu")])
        self.device.setToolTip("Auto: CUDA when available, then Apple MPS, else the CPU; a GPU "
                               "that runs out of memory falls back to the CPU with a warning")
        self.method = QComboBox()
        for text, m in EXPLAIN_CHOICES:
            self.method.addItem(text, m)
        self.method.setToolTip("How the heat map is made (Grad-CAM is the default)")
        self.method.currentIndexChanged.connect(self._method_changed)
        self.target = QComboBox()
        self.target.setToolTip("Which output the heat map explains")
        form = QFormLayout()
        form.setContentsMargins(0, 2, 0, 2)
        form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        form.addRow("Device", self.device)
        form.addRow("Explanation", self.method)
        form.addRow("Target", self.target)
        self.override = QCheckBox("Research override")
        self.override.setToolTip("Run the selected model on a series its card does not fit "
                                 "(modality, body part, image kind, age, view): research only, "
                                 "decisions withheld, the override is shown with the result")
        form.addRow("", self.override)

        self.run_btn = QPushButton("▶  Run")
        self.run_btn.setToolTip("Run the selected model on the shown series")
        self.run_btn.setStyleSheet(f"QPushButton {{ background: {ACCENT}; color: white; border: none; "
                                   "font-weight: 600; padding: 6px 16px; } QPushButton:hover "
                                   "{ background: #5599ff; } QPushButton:disabled { background: #2c3a52; "
                                   "color: #7d8797; }")
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("%p%")
        rrow = QHBoxLayout()
        rrow.setContentsMargins(0, 4, 0, 0)
        rrow.addWidget(self.run_btn)
        rrow.addWidget(self.cancel_btn)
        rrow.addWidget(self.progress, 1)
        self.status = QLabel("")
        self.status.setStyleSheet(f"color: {MUTED};")
        self.status.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)

        self.error = QLabel("")
        self.error.setObjectName("BannerError")
        self.error.setWordWrap(True)
        self.error.setTextFormat(Qt.PlainText)  # error lines may quote a card's text
        self.error.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.error.hide()
        self.warnings = QLabel("")
        self.warnings.setObjectName("Banner")
        self.warnings.setWordWrap(True)
        self.warnings.setTextFormat(Qt.RichText)
        self.warnings.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.warnings.hide()

        self.results = QTextBrowser()
        self.results.setOpenLinks(False)
        self.results.anchorClicked.connect(self._anchor)
        self.results.setPlaceholderText("Results of a run appear here.")
        self.results.setMinimumHeight(140)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 4, 6, 6)
        lay.setSpacing(5)
        lay.addWidget(self.series_label)
        lay.addWidget(self.tree)
        lay.addWidget(self.details)
        lay.addLayout(brow)
        lay.addLayout(form)
        lay.addLayout(rrow)
        lay.addWidget(self.status)
        lay.addWidget(self.error)
        lay.addWidget(self.warnings)
        lay.addWidget(self.results, 1)

    def _set_devices(self, devices):
        cur = self.device.currentData() if self.device.count() else None
        self.device.blockSignals(True)
        self.device.clear()
        for text, val in devices:
            self.device.addItem(text, val)
        i = self.device.findData(cur)
        self.device.setCurrentIndex(max(0, i))
        self.device.blockSignals(False)

    # ================================================================== catalogue
    def showEvent(self, ev):
        super().showEvent(ev)
        # Listing imports torch (seconds of GIL-heavy work): do it only once the panel is
        # really on screen, not when the window first lays out its tabbed docks - that would
        # slow the first image of the study.
        QTimer.singleShot(200, self._refresh_if_on_screen)

    def _refresh_if_on_screen(self):
        if (not self._catalog_loaded and self.state != "listing" and self.isVisible()
                and not self.visibleRegion().isEmpty()):
            self.refresh()

    def refresh(self, rehash: bool = False):
        """Read the registry again (on a thread) and re-check the weights."""
        if rehash:
            self._verify_cache.clear()
            self._models.clear()
        self._cat_token += 1
        if self.state not in ("running", "cancelling"):
            self.state = "listing"
        self.series_label.setText("Reading the model folders…")
        t = worker_thread(_catalog_worker, "models-catalog", (self._cat_token, self._bridge, self._verify_cache))
        t.start()

    def _on_catalog(self, token, entries, devices, err):
        if token != self._cat_token:
            return
        self.entries = list(entries)
        self.verify_state = {}
        self._catalog_loaded = True
        self._list_error = err
        if devices:
            self._set_devices(devices)
        if self.state == "listing":
            self.state = "idle"
        self._rematch(select_best=True)
        again, self._reselect = self._reselect, None
        if again is not None:
            mid, why = again
            e = next((x for x in self.entries if x.card is not None and x.card.id == mid and not x.shadowed_by),
                     None)
            if e is not None:
                self._fill_tree(str(e.folder))
                self._selection_changed()
            self._show_error(why)
        if err:
            self._show_error(err, sticky=True)
        elif self._sticky_error:
            self.error.hide()
            self._sticky_error = False
        self.catalogReady.emit()

    def _on_verified(self, token, folder, res):
        if token != self._cat_token:
            return
        if isinstance(res, str):
            self.verify_state[folder] = (False, res)
        else:
            bad = [v for v in res if not v.ok]
            self.verify_state[folder] = (not bad, bad[0].message if bad else
                                         ", ".join(f"{v.file} {v.algorithm} ok" for v in res))
            e = self._entry(folder)
            if e is not None:
                e.verify = list(res)
        it = self._item(folder)
        if it is not None:
            self._fill_verify(it, folder)
        cur = self.current_entry()
        if cur is not None and str(cur.folder) == folder:
            best = self.best_match()
            if self.verify_state[folder][0] is False and best is not None and best is not cur:
                self._rematch(select_best=True)  # the pre-selected model failed its check
            else:
                self._show_details()

    def _on_rejected(self, folder, why):
        """A run's load found the weights changed since they were checked (sha256 mismatch)."""
        self.verify_state[folder] = (False, why)
        it = self._item(folder)
        if it is not None:
            self._fill_verify(it, folder)
        cur = self.current_entry()
        if cur is not None and str(cur.folder) == folder:
            self._show_details()

    def _entry(self, folder: str):
        for e in self.entries:
            if str(e.folder) == folder:
                return e
        return None

    def _item(self, folder: str):
        for n in range(self.tree.topLevelItemCount()):
            it = self.tree.topLevelItem(n)
            if it.data(0, FOLDER_ROLE) == folder:
                return it
        return None

    def _usable(self, e) -> bool:
        return e is not None and e.card is not None and not e.shadowed_by

    def _rematch(self, select_best: bool):
        if self.slide_runs is not None and self.slide_runs.active():
            return self.slide_runs.rematch(select_best)
        self.facts = series_facts(self.doc.volume, self.doc.series)
        self.matches = {str(e.folder): match_card(e.card, self.facts) for e in self.entries
                        if self._usable(e)}
        cur = self.current_entry()
        keep = str(cur.folder) if cur is not None else None
        best = self.best_match()
        if select_best and best is not None:
            keep = str(best.folder)
        self._fill_tree(keep)
        n = sum(1 for m in self.matches.values() if m.ok)
        if self.facts is None:
            head = "Open a series to run a model on it."
        elif not self.entries:
            head = (f"Series: {esc(self.facts.describe())}. No models are registered: add a "
                    "folder of models (model.json + weights).")
        elif n:
            head = (f"Series: {esc(self.facts.describe())} — <span style='color:{OK_COLOR}'>"
                    f"{n} model{'s' if n > 1 else ''} fit{'s' if n == 1 else ''} (★)</span>")
        else:
            head = (f"Series: {esc(self.facts.describe())} — <span style='color:{WARN_FG}'>no model "
                    "card matches: choose one manually</span>")
        self.series_label.setText(head)
        self._selection_changed()

    def best_match(self):
        """The entry whose card fits the series best (None: manual choice)."""
        best, key = None, None
        for order, e in enumerate(self.entries):
            m = self.matches.get(str(e.folder))
            if m is None or not m.ok:
                continue
            ver = self.verify_state.get(str(e.folder), (None, ""))[0]
            k = (m.score, ver is not False, -order)
            if key is None or k > key:
                best, key = e, k
        return best

    def _fill_tree(self, select_folder: str | None):
        self.tree.blockSignals(True)
        self.tree.clear()
        sel = None
        for e in sorted(self.entries, key=self._sort_key):
            folder = str(e.folder)
            c = e.card
            m = self.matches.get(folder)
            if c is None:
                it = QTreeWidgetItem([e.folder.name, "invalid", "—", "—", "✗"])
                it.setToolTip(0, plain_tip(e.error or "invalid model card"))
                it.setForeground(4, QBrush(QColor(ERROR_FG)))
                for col in range(4):
                    it.setForeground(col, QBrush(QColor(MUTED)))
            else:
                task = {"classification": "class.", "segmentation": "seg."}.get(c.task, c.task)
                mod = "/".join(c.modality) + (f" {c.body_part}" if c.body_part else "")
                star = "★ " if m is not None and m.ok else ""
                name = star + c.id + (" (shadowed)" if e.shadowed_by else "")
                it = QTreeWidgetItem([name, f"{task} {c.spatial_dims}D", mod, c.version, "…"])
                tip = [c.name, f"{c.task}, {c.spatial_dims}D, {'/'.join(c.modality)}"
                       + (f", {c.body_part}" if c.body_part else ""), f"folder: {folder} ({e.source})"]
                if e.shadowed_by:
                    tip.append(f"shadowed by {e.shadowed_by} (same id)")
                elif m is not None:
                    tip.append("fits this series" if m.ok else f"does not fit: {m.reason}")
                it.setToolTip(0, plain_tip("\n".join(tip)))  # card text of an added folder: never markup
                if m is not None and m.ok:
                    f = QFont(it.font(0))
                    f.setBold(True)
                    it.setFont(0, f)
                if e.shadowed_by:
                    for col in range(5):
                        it.setForeground(col, QBrush(QColor(MUTED)))
            it.setData(0, FOLDER_ROLE, folder)
            self.tree.addTopLevelItem(it)
            if c is not None:
                self._fill_verify(it, folder)
            if folder == select_folder:
                sel = it
        self.tree.blockSignals(False)
        self._fit_tree_height()
        if sel is not None:
            self.tree.setCurrentItem(sel)
        elif self.tree.topLevelItemCount():
            self.tree.setCurrentItem(None)
        self._selection_changed()

    def _fit_tree_height(self):
        """As tall as its rows (between about 4 and 10 rows), so the results get the rest."""
        n = max(3, self.tree.topLevelItemCount())
        row = self.tree.sizeHintForRow(0) if self.tree.topLevelItemCount() else 20
        h = self.tree.header().sizeHint().height() + n * max(row, 16) + 2 * self.tree.frameWidth() + 6
        self.tree.setFixedHeight(max(96, min(230, h)))

    def _sort_key(self, e):
        """Models that fit the series first (best first), then the others, invalid last."""
        m = self.matches.get(str(e.folder))
        fits = m is not None and m.ok
        return (e.card is None, bool(e.shadowed_by), not fits, -(m.score if fits else 0), e.id)

    def _fill_verify(self, it, folder):
        e = self._entry(folder)
        if e is None or e.card is None:
            return
        if e.shadowed_by:
            it.setText(4, "–")
            return
        ok, why = self.verify_state.get(folder, (None, ""))
        it.setText(4, {True: "✓", False: "✗", None: "…"}[ok])
        it.setForeground(4, QBrush(QColor({True: OK_COLOR, False: ERROR_FG, None: MUTED}[ok])))
        it.setToolTip(4, plain_tip({True: "weights verified (sha256 matches the card)",
                                    None: "checking the weights…"}.get(ok, why)))

    # ================================================================== selection
    def current_entry(self):
        it = self.tree.currentItem()
        if it is None:
            return None
        return self._entry(it.data(0, FOLDER_ROLE))

    def select_model(self, model_id: str) -> bool:
        """Select a model by id (or folder); True when found."""
        for n in range(self.tree.topLevelItemCount()):
            it = self.tree.topLevelItem(n)
            e = self._entry(it.data(0, FOLDER_ROLE))
            if e is not None and (e.id == model_id or str(e.folder) == model_id) and not e.shadowed_by:
                self.tree.setCurrentItem(it)
                return True
        return False

    def _selection_changed(self):
        if self.error.isVisible() and not self._sticky_error and not self.running:
            self.error.hide()  # a run's error belongs to the model that was selected
        e = self.current_entry()
        self._fill_targets(e)
        self._check_methods(e)
        self._show_details()
        self._update_enabled()

    def _show_details(self):
        e = self.current_entry()
        if e is None:
            self.details.setText(f"<span style='color:{MUTED}'>Select a model.</span>"
                                 if self.entries else "")
            return
        if e.card is None:
            why = esc(one_line(e.error or "invalid card"))
            self.details.setText(f"<span style='color:{ERROR_FG}'>✗ {why}</span>")
            return
        c = e.card
        lines = [f"<b>{esc(c.name)}</b> <span style='color:{MUTED}'>v{esc(c.version)}</span>"]
        if e.shadowed_by:
            lines.append(f"<span style='color:{WARN_FG}'>Shadowed by {esc(e.shadowed_by)} (same id): "
                         "that one is used.</span>")
        m = self.matches.get(str(e.folder))
        if m is not None:
            if m.ok:
                lines.append(f"<span style='color:{OK_COLOR}'>★ Fits this series</span>")
                for w in getattr(m, "warnings", []):  # fits, but this was not checked
                    lines.append(f"<span style='color:{WARN_FG}'>⚠ {esc(w)}</span>")
            elif self.facts is not None:
                lines.append(f"<span style='color:{WARN_FG}'>⚠ Not made for this series: "
                             f"{esc(m.reason)}</span>")
        ok, why = self.verify_state.get(str(e.folder), (None, ""))
        if ok is True:
            lines.append(f"<span style='color:{OK_COLOR}'>✓ Weights verified (sha256)</span>")
        elif ok is False:
            lines.append(f"<span style='color:{ERROR_FG}'>✗ {esc(why)}</span>")
        else:
            lines.append(f"<span style='color:{MUTED}'>Checking the weights…</span>")
        self.details.setText("<br>".join(lines))

    def _fill_targets(self, e):
        cur = self.target.currentText()
        self.target.clear()
        c = e.card if e is not None else None
        if c is None:
            self.target.addItem("—", None)
        elif c.task == "classification":
            self.target.addItem("Positive finding, else the top label", None)
            for lab in c.labels:
                self.target.addItem(lab, [lab])
            if len(c.labels) > 1:
                self.target.addItem("Every label", list(c.labels))
        else:
            self.target.addItem("Every structure found", None)
            for _, lab in c.foreground_labels:
                self.target.addItem(lab, [lab])
        i = self.target.findText(cur)
        if i >= 0:
            self.target.setCurrentIndex(i)

    @staticmethod
    def _gradcam_possible(card) -> bool:
        if card is None:
            return True
        if card.format == "torchscript":
            return False
        return not (card.format == "monai_bundle" and any(w.file.endswith(".ts") for w in card.weights))

    def _check_methods(self, e):
        card = e.card if e is not None else None
        ok = self._gradcam_possible(card)
        item = self.method.model().item(0)
        item.setEnabled(ok)
        item.setToolTip("" if ok else "Grad-CAM needs layer hooks, which TorchScript models do not have")
        self.method.blockSignals(True)
        if not ok and self.method.currentData() == "gradcam":
            self.method.setCurrentIndex(self.method.findData("saliency"))
            self._method_auto_switched = True
        elif ok and self._method_auto_switched:
            self.method.setCurrentIndex(0)
            self._method_auto_switched = False
        self.method.blockSignals(False)
        self.target.setEnabled(self.method.currentData() is not None and card is not None)

    def _method_changed(self, _i):
        self._method_auto_switched = False
        self.target.setEnabled(self.method.currentData() is not None and self.current_entry() is not None)

    def set_method(self, method: str | None) -> None:
        """Select an explanation method by engine name (None: no explanation)."""
        self.method.setCurrentIndex(self.method.findData(method))

    def set_target(self, label: str) -> None:
        i = self.target.findText(label)
        if i >= 0:
            self.target.setCurrentIndex(i)

    def set_device(self, device: str | None) -> None:
        i = self.device.findData(device)
        if i >= 0:
            self.device.setCurrentIndex(i)

    # ================================================================== enabling
    def _volume_ready(self) -> bool:
        vol = self.doc.volume
        return vol is not None and (vol.loaded is None or bool(vol.loaded.all()))

    @property
    def running(self) -> bool:
        return self.state in ("running", "cancelling")

    def _update_enabled(self, *_):
        if self.slide_runs is not None and self.slide_runs.active():
            return self.slide_runs.update_enabled()
        e = self.current_entry()
        can = self._usable(e) and self._volume_ready() and not self.running
        self.run_btn.setEnabled(bool(can))
        if not self._usable(e):
            self.run_btn.setToolTip("Select a valid model")
        elif self.doc.volume is None:
            self.run_btn.setToolTip("Open a series first")
        elif not self._volume_ready():
            self.run_btn.setToolTip("Wait until the whole series is loaded")
        else:
            self.run_btn.setToolTip("Run the selected model on the shown series")
        self.cancel_btn.setEnabled(self.state == "running")
        self.card_btn.setEnabled(e is not None and e.card is not None)
        for w in (self.tree, self.add_btn, self.refresh_btn, self.device, self.method):
            w.setEnabled(not self.running)
        self.target.setEnabled(not self.running and e is not None and e.card is not None
                               and self.method.currentData() is not None)

    # ================================================================== running
    def run(self) -> bool:
        """Start the selected model on the shown series; False (with a one-line error) when
        it cannot start."""
        if self.running:
            return False
        if self.slide_runs is not None and self.slide_runs.active():
            return self.slide_runs.run()
        e = self.current_entry()
        if e is None:
            self._show_error("Select a model first.")
            return False
        if e.card is None:
            self._show_error(one_line(e.error or "invalid model card"))
            return False
        if e.shadowed_by:
            self._show_error(f"{e.id} in {e.folder} is shadowed by {e.shadowed_by}; select that one.")
            return False
        from imaging_assist.nodules.run import is_nodule_model

        if is_nodule_model(e.card):  # a window model: run on a whole series it would answer nonsense
            self._show_error(f"{e.card.id} characterises a nodule you point at, not a whole series: "
                             "Shift+click the nodule (or press N over it) in the viewer.")
            return False
        changed = self._version_changed(e)
        if changed:  # the list is read again, the same model kept selected and the line kept shown;
            # the run starts on the next click, on the version in use
            self._show_error(changed)
            self._reselect = (e.card.id, changed)
            self.refresh()
            return False
        vol = self.doc.volume
        if vol is None:
            self._show_error("Open a series first.")
            return False
        if not self._volume_ready():
            self._show_error("The series is still loading: wait until all slices are read.")
            return False
        from imaging_assist.inference.jobs import submit

        m = match_card(e.card, series_facts(vol, getattr(self.doc, "series", None)))
        if not m.ok and not self.override.isChecked():
            self._show_error(f"{e.card.id} is not made for this series: {m.reason}. Tick "
                             "'Research override' to run it anyway (decisions withheld).")
            return False
        settings = {"device": self.device.currentData(), "method": self.method.currentData(),
                    "labels": self.target.currentData() if self.method.currentData() else None,
                    "override_reasons": list(m.reasons) if not m.ok else [],
                    "match_warnings": list(m.warnings)}  # said in the run's exports, as analyze says them
        self._run_token += 1
        token = self._run_token
        self._run_ctx = {"entry": e, "card": e.card, "volume": vol, "settings": settings,
                         "series_key": series_key(self.doc),  # the part/stack, not only the UID
                         "t0": time.perf_counter(), "live_warnings": []}
        self._clear_outcome()
        self.state = "running"
        self.progress.setValue(0)
        self.status.setText(f"Starting {e.card.id}…")
        self._update_enabled()
        bridge = self._bridge
        self.job = submit(_run_job, e.card, vol, settings, token, bridge, self._models,
                          on_progress=lambda f, m, t=token, b=bridge: _emit(b.progress, t, f, m))
        return True

    def _version_changed(self, e) -> str | None:
        """One line when the registry no longer resolves ``e``'s id to ``e`` (a site version
        promoted or rolled back, a folder added, from the command line or another window, since
        the list was read): the panel ran the version it had listed, a rolled-back one included,
        until the list was refreshed by hand.  Reads the model folders' cards again (~0.1 s)."""
        if e.source == "path":
            return None
        from imaging_assist.models.registry import Registry

        try:
            now = Registry().get(e.card.id)
        except UserError as err:  # refused now (a promoted version changed on disk...)
            return f"{one_line(err)} (the model list is read again)"
        if now.folder != e.folder or now.card.version != e.card.version:
            return (f"{e.card.id}: the version in use changed since the list was read ({e.card.version} in "
                    f"{e.folder} -> {now.card.version} in {now.folder}: promoted, rolled back or added "
                    "elsewhere); the list is read again: run it once more")
        return None

    def cancel(self):
        """Ask the running job to stop (it stops at the next window / slice batch)."""
        if self.job is not None and self.state == "running":
            self.job.cancel()
            self.state = "cancelling"
            self.status.setText("Cancelling…")
            self._update_enabled()

    def _quit(self):
        if self.job is not None:
            self.job.cancel()

    def _on_progress(self, token, fraction, message):
        if token != self._run_token or not self.running:
            return
        self.progress.setValue(int(round(1000 * max(0.0, min(1.0, fraction)))))
        if message.startswith("warning:") and self._run_ctx is not None:
            self._run_ctx["live_warnings"].append(message[len("warning:"):].strip())
            self._show_warnings(self._run_ctx["live_warnings"])
        if message and message != "done" and self.state == "running":
            self.status.setText(message)
            self.status.setToolTip(message)

    def _on_finished(self, token, status, payload, load_s):
        if token != self._run_token:
            return
        ctx = self._run_ctx or {}
        self.job = None
        elapsed = time.perf_counter() - ctx.get("t0", time.perf_counter())
        if self.state == "cancelling":  # the reader was told "Cancelling…": whatever came back
            status, payload = "cancelled", None  # is dropped (not shown, not in the session's runs)
        if status == "done":
            self.progress.setValue(1000)
            res, view = payload
            self._show_result(res, view, ctx, elapsed)
        else:
            self.end_without_result(status, payload or "the model run failed")
        self._update_enabled()
        self.runFinished.emit(status)

    def end_without_result(self, status: str, error: str = "") -> None:
        """A run that ended "cancelled" (nothing added) or failed (its one-line ``error``); also
        the slide runs' (ui/slides/slide_ai.py)."""
        self.state = "cancelled" if status == "cancelled" else "error"
        self.progress.setValue(0)
        if status == "cancelled":
            self.status.setText("Cancelled — nothing was added.")
        else:
            self.status.setText("")
            self._show_error(error)

    # ================================================================== results
    def _show_result(self, res, view, ctx, elapsed):
        """On the GUI thread: only cheap work (the layers and HTML were made by the worker)."""
        card = ctx["card"]
        vol = ctx["volume"]
        self.last_result = res
        warns = list(ctx.get("live_warnings", []))
        warns += [w for w in res.warnings if w not in warns]
        for h in res.heatmaps:
            warns += [f"{h.label}: {w}" for w in h.warnings]
        warns += view["notes"]
        if self.doc.volume is not vol:
            self.state = "done"
            self.status.setText("Finished, but the series changed meanwhile: nothing was added.")
            return
        # a new run of the same model replaces its overlays (a layer another model's result was
        # merged into stays, without this model's part)
        drop_model(self.doc.layers, card.id)
        added = []
        try:
            for layer in view["layers"]:
                added.append(self._add_layer(layer))
        except (ValueError, UserError) as e:
            self._show_error(f"could not add the overlay: {one_line(e)}")
        self.result_layers = added
        self.results.setHtml(view["html"])
        self._show_warnings(warns)
        self.state = "done"
        n = sum(1 for mine, got in zip(view["layers"], added) if got is mine)  # merged ones are not new
        same = len(added) - n
        self.status.setText(f"Done in {elapsed:.1f} s — {n} overlay{'s' if n != 1 else ''} added"
                            + (f", {same} already shown (its source added)" if same else "") + ".")
        keep_outcome(self, card, view["html"], warns)  # issue 17: back with the series (series_results.py)

    def shown_lines(self) -> list[str]:
        """The results as shown, one string per line (what a reader sees)."""
        return [ln for ln in self.results.toPlainText().splitlines() if ln.strip()]

    def _anchor(self, url):
        s = url.toString()
        if s.startswith("slice:"):
            try:
                self.doc.set_index(0, int(s.split(":", 1)[1]))
            except ValueError:
                pass

    # ================================================================== messages
    def _clear_outcome(self):
        self.error.hide()
        self.error.setText("")
        self.last_error = ""
        self.warnings.hide()
        self.warnings.setText("")
        self.results.clear()
        self.last_result = None

    def _show_error(self, text: str, sticky: bool = False):
        """One line in red; ``sticky`` ones (the model list cannot be read) stay when another
        model is selected."""
        self._sticky_error = sticky
        text = one_line(text)
        self.last_error = text
        self.error.setText("✗ " + text)
        self.error.setToolTip(plain_tip(text))
        self.error.show()

    def error_text(self) -> str:
        return self.last_error if self.error.isVisible() else ""

    def _show_warnings(self, warns: list[str]):
        warns = list(dict.fromkeys(w for w in warns if w))
        # the series' own warnings are in the banner above the image: said once, pointed to here
        in_banner = set(getattr(self.doc.volume, "warnings", None) or [])
        n_dup = sum(w in in_banner for w in warns)
        warns = [w for w in warns if w not in in_banner]
        if n_dup:
            warns.append(f"{n_dup} warning{'s' if n_dup > 1 else ''} about the series itself: "
                         "see the banner above the image")
        if not warns:
            self.warnings.hide()
            return
        self.warnings.setText("<br>".join(f"⚠ {esc(w)}" for w in warns))
        self.warnings.show()

    def warning_texts(self) -> list[str]:
        if not self.warnings.isVisible():
            return []
        return [ln[2:] if ln.startswith("⚠ ") else ln
                for ln in self.warnings.text().replace("<br>", "\n").splitlines()]

    # ================================================================== misc
    def stop_run(self, why: str) -> bool:
        """Cancel a running job and ignore its outcome (it belongs to a series no longer shown,
        or to a window that closed); True when one was running."""
        if not self.running:
            return False
        job = self.job
        self._run_token += 1  # its late "finished" is ignored
        if job is not None:
            job.cancel()
        self.job = None
        self.state = "cancelled"
        self.progress.setValue(0)
        self._clear_outcome()
        self.status.setText(f"Cancelled: {why}.")
        self.runFinished.emit("cancelled")
        return True

    def _on_volume(self):
        if self.stop_run("the series changed"):
            pass
        elif self.state in ("done", "error", "cancelled"):
            self._clear_outcome()
            self.status.setText("")
            self.progress.setValue(0)
            self.state = "idle"
        else:  # idle or listing the models: no run of its own, but findings restored for the old
            self.results.clear()  # series may be shown
            self.warnings.hide()
            self.warnings.setText("")
            self.last_result = None
        self.result_layers = []
        # not when a run was just cancelled by the change; but while the model folders are being
        # read (a few seconds after the panel first shows) the series' results do come back
        restored = self.state in ("idle", "listing") and restore_outcome(self)  # issue 17
        self._follow_feedback(restored)
        if self._catalog_loaded:
            self._rematch(select_best=True)
        else:
            self.facts = series_facts(self.doc.volume, self.doc.series)
        self._update_enabled()

    def _follow_feedback(self, restored: bool) -> None:
        """The feedback box offers verdicts on what is on screen: the newest run restored for the
        new series, else nothing (the old series' findings are gone from the panel too)."""
        box = getattr(self, "feedback_box", None)
        if box is None:
            return
        run = last_outcome(self) if restored else None
        if run is not None and run.get("result") is not None and run.get("card") is not None:
            box.set_result(run["result"], run["card"], self.doc.volume)
        else:
            box.set_result(None)

    def show_card(self):
        e = self.current_entry()
        if e is None or e.card is None:
            return None
        from .model_card_dialog import ModelCardDialog

        if self.card_dialog is not None:
            self.card_dialog.close()
        self.card_dialog = ModelCardDialog(e.card, e, self)
        self.card_dialog.show()
        return self.card_dialog

    def _add_folder_dialog(self):
        path = QFileDialog.getExistingDirectory(self, "Add a folder of models")
        if path:
            self.add_folder(path)

    def add_folder(self, path: str) -> bool:
        try:
            from imaging_assist.models.registry import Registry

            Registry().add_folder(path)
        except UserError as e:
            self._show_error(one_line(e))
            return False
        self.error.hide()
        self.refresh()
        return True
