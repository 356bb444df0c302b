"""The model runs of this session, kept once for every export (PDF report, DICOM objects).

One log listens to the AI panel's ``runFinished``: for the latest run of each model on each
series it keeps the in-memory result (label maps and heat maps, for DICOM), its results.json
item (with the issue-14 decision applied) and the key views taken while the series was still
loaded (for the report, so a series no longer shown keeps its pictures).
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QTimer


@dataclass
class Run:
    result: object  # the engine's InferenceResult
    item: dict  # its results.json item, as analyze would write it (without files)
    card: object
    views: dict  # export.report_pdf.capture(): {"header", "views"}


def series_key(vol) -> str:
    """The key of the series ``vol`` is shown as: the study index's series key and stack label
    (radiology.series_results.series_key), so that the parts of one split SeriesInstanceUID keep
    their runs apart."""
    from ..radiology.series_results import volume_key

    return volume_key(vol) or str(id(vol))


def result_item(res, card, settings: dict | None = None) -> dict:
    """A results.json item of an in-memory result, as analyze would write it (without files):
    analyze's own trust checks (research override recorded, decision, quality checks)."""
    from imaging_assist.inference.checks import apply_trust_checks

    d = res.to_dict()
    d["heatmaps"] = [h.to_dict() for h in res.heatmaps]
    apply_trust_checks(d, res, card, list((settings or {}).get("override_reasons") or []),
                       list((settings or {}).get("match_warnings") or []))
    return d


class SessionRuns:
    def __init__(self, win):
        self.win = win
        self.runs: dict[tuple[str, str], Run] = {}  # (series key, model id) -> Run
        QTimer.singleShot(0, self._hook)

    def _hook(self):
        panel = getattr(self.win, "model_panel", None)
        if panel is not None:
            panel.runFinished.connect(self._on_run)

    def _on_run(self, status: str):
        panel = self.win.model_panel
        ctx = panel._run_ctx or {}
        res, vol = panel.last_result, ctx.get("volume")
        if status != "done" or res is None or vol is None:
            return
        self.add(vol, res, ctx["card"], ctx.get("settings"), key=ctx.get("series_key"))

    def add(self, vol, res, card, settings=None, key: str | None = None) -> Run:
        """``key``: the series key of the document the run was started on (series_results.series_key)."""
        from imaging_assist.export.report_pdf import capture

        d = result_item(res, card, settings)
        run = Run(res, d, card, capture(d, vol, result=res))
        self.runs[(key or series_key(vol), card.id)] = run
        return run

    def of_series(self, key: str) -> list[Run]:
        return [r for (series, _mid), r in self.runs.items() if series == key]


def session_runs(win) -> SessionRuns:
    """The window's one run log (made on first use)."""
    log = getattr(win, "session_runs", None)
    if log is None:
        log = win.session_runs = SessionRuns(win)
    return log
