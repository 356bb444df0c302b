"""The Monitor panel: :func:`imaging_assist.monitoring.drift.monitor` per window, in plots
(matplotlib, Qt canvas) and an alerts list.  Four plots, one point per window, alerting
windows in red: OOD score (median, with the flag rate), input intensity (median of the
per-image means), positive rate (95% Wilson interval) and agreement with readers (95% interval),
each against the model's training reference."""

from __future__ import annotations

import logging

from PySide6.QtWidgets import (QComboBox, QDialog, QHBoxLayout, QLabel, QListWidget, QPushButton,
                               QVBoxLayout)

_log = logging.getLogger(__name__)

REF_COLOR = "#888888"
OK_COLOR = "#2a7fd4"
ALERT_COLOR = "#d62728"


class MonitorDialog(QDialog):
    def __init__(self, model_id: str | None = None, window: str = "7d", parent=None, log=None):
        super().__init__(parent)
        self.setWindowTitle("Monitor — drift and agreement (Not for clinical use)")
        self._log = log
        self.report = None
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(9, 6), dpi=90, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.model = QComboBox()
        self.window_box = QComboBox()
        self.window_box.setEditable(True)
        for w in ("7d", "1d", "30d", "100", "500"):
            self.window_box.addItem(w)
        self.window_box.setCurrentText(window)
        self.window_box.setToolTip("days (7d) or a number of consecutive runs (100)")
        self.refresh_btn = QPushButton("Refresh")
        self.refresh_btn.clicked.connect(self.refresh)
        top = QHBoxLayout()
        top.addWidget(QLabel("Model"))
        top.addWidget(self.model, 1)
        top.addWidget(QLabel("Window"))
        top.addWidget(self.window_box)
        top.addWidget(self.refresh_btn)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.alerts = QListWidget()
        self.alerts.setMaximumHeight(110)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.summary)
        lay.addWidget(self.canvas, 1)
        lay.addWidget(QLabel("Alerts"))
        lay.addWidget(self.alerts)
        self.resize(980, 820)
        self._fill_models(model_id)
        self.model.currentIndexChanged.connect(lambda _i: self.refresh())
        self.refresh()

    def _lg(self):
        from imaging_assist.monitoring.log import db_path, open_log

        if self._log is not None:
            return self._log
        return open_log() if db_path().exists() else None

    def _fill_models(self, model_id):
        from imaging_assist.errors import UserError
        try:
            lg = self._lg()
            ids = [r[0] for r in lg.query("SELECT DISTINCT model_id FROM runs ORDER BY 1")] if lg else []
        except UserError:  # a damaged log: refresh() says so in the summary line
            ids = []
        if model_id and model_id not in ids:
            ids.insert(0, model_id)
        self.model.blockSignals(True)
        self.model.clear()
        self.model.addItems(ids)
        if model_id:
            self.model.setCurrentText(model_id)
        self.model.blockSignals(False)

    def refresh(self) -> dict | None:
        from imaging_assist.errors import UserError
        from imaging_assist.monitoring.drift import monitor

        self.alerts.clear()
        self.figure.clear()
        mid = self.model.currentText() or None
        try:
            lg = self._lg()
        except UserError as e:  # the log cannot be opened (damaged, newer release): one line
            self.summary.setText(f"error: {e}")
            self.canvas.draw_idle()
            return None
        if lg is None or mid is None:
            self.summary.setText("No prediction log yet: it fills as models run.")
            self.canvas.draw_idle()
            return None
        try:
            rep = monitor(mid, window=self.window_box.currentText(), log=lg)
        except UserError as e:
            self.summary.setText(f"error: {e}")
            self.canvas.draw_idle()
            return None
        except Exception as e:  # noqa: BLE001 - a Qt slot: said in the summary line, never escapes
            _log.exception("monitor failed")
            self.summary.setText(f"error: internal error ({type(e).__name__}: {' '.join(str(e).split())[:200]})")
            self.canvas.draw_idle()
            return None
        self.report = rep
        m = rep["models"][0]
        for a in rep["alerts"]:
            self.alerts.addItem("⚠ " + a["text"])
        if not rep["alerts"]:
            self.alerts.addItem("no alerts")
        ref = m.get("reference") or {}
        self.summary.setText(
            f"{m['model_id']} {m.get('card_version', '')}: {m['n_runs']:,} logged runs of this version in "
            f"{len(m['windows'])} windows; reference: "
            f"{ref.get('data', 'none')}. " + " ".join(m.get("notes", [])))
        self._plot(m)
        return rep

    def _plot(self, m):
        ws = m["windows"]
        axes = self.figure.subplots(2, 2, sharex=True)
        x = list(range(len(ws)))
        ticks = [w["start"][5:10] if rep_kind_days(self) else str(w["index"] + 1) for w in ws]
        colors = [ALERT_COLOR if w["alert"] else OK_COLOR for w in ws]

        def series(ax, title, vals, lo=None, hi=None, ref=None, ylim=None):
            ax.set_title(title, fontsize=10)
            xs = [i for i, v in zip(x, vals) if v is not None]
            vs = [v for v in vals if v is not None]
            if not vs:  # say why the plot is empty instead of showing blank axes
                ax.text(0.5, 0.5, "no data in these windows" if "readers" not in title else
                        "no reader feedback in these windows", ha="center", va="center",
                        transform=ax.transAxes, color=REF_COLOR)
            ax.plot(xs, vs, "-", color=OK_COLOR, lw=1, alpha=0.6)
            ax.scatter(xs, vs, c=[colors[i] for i in xs], zorder=3, s=28)
            if lo is not None:
                for i, a, b in zip(x, lo, hi):
                    if a is not None and b is not None:
                        ax.vlines(i, a, b, color=colors[i], lw=2, alpha=0.7)
            if ref is not None:
                ax.axhline(ref, color=REF_COLOR, ls="--", lw=1, label="training reference")
                ax.legend(fontsize=8, loc="best")
            if ylim:
                ax.set_ylim(*ylim)
            ax.grid(alpha=0.3)

        def g(w, *path):
            d = w
            for p in path:
                d = (d or {}).get(p) if isinstance(d, dict) else None
            return d

        series(axes[0][0], "OOD score (median per window)", [g(w, "input", "ood_score", "median") for w in ws],
               ref=g(ws[0], "input", "ood_score", "reference_median") if ws else None)
        series(axes[0][1], "Image intensity (median of per-image means)",
               [g(w, "input", "int_mean", "median") for w in ws],
               ref=g(ws[0], "input", "int_mean", "reference_median") if ws else None)
        pr = [g(w, "output", "positive_rate") or {} for w in ws]
        series(axes[1][0], "Positive rate (95% CI)", [p.get("rate") for p in pr],
               [(p.get("ci95") or [None, None])[0] for p in pr], [(p.get("ci95") or [None, None])[1] for p in pr],
               ref=pr[0].get("reference_rate") if pr else None, ylim=(0, 1))
        ag = [g(w, "readers", "agreement") or {} for w in ws]
        series(axes[1][1], "Agreement with readers (95% CI)", [a.get("value") for a in ag],
               [(a.get("ci95") or [None, None])[0] for a in ag], [(a.get("ci95") or [None, None])[1] for a in ag],
               ylim=(0, 1.02))
        for ax in axes[1]:
            ax.set_xticks(x, ticks, rotation=45, fontsize=8)
            ax.set_xlabel("window (start date)" if rep_kind_days(self) else "window (runs)")
        self.canvas.draw_idle()


def rep_kind_days(dlg) -> bool:
    return bool(dlg.report and dlg.report["window"]["kind"] == "days")
