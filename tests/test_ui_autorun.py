"""The viewer's demo auto-run and model matching: one rule set with the engine
(imaging_assist.models.matching), and the auto-run never runs a model that is not
ModelEntry.runnable_without_prompt (weights verified, and no code or trusted code)."""

import os
from types import SimpleNamespace

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QObject, Signal  # noqa: E402

from _qt import wait_until  # noqa: E402

pytestmark = pytest.mark.gui


def test_model_support_uses_the_engines_matching():
    from imaging_assist.models import matching
    from imaging_assist_ui.ai import model_panel, model_support

    for name in ("SeriesFacts", "series_facts", "match_card", "Match"):
        assert getattr(model_support, name) is getattr(matching, name), name
        assert getattr(model_panel, name, getattr(matching, name)) is getattr(matching, name), name
    # the engine's answer for a plain image (no modality): fits, with a warning the panel shows
    card = SimpleNamespace(modality=["CR", "DX"], body_part="CHEST", spatial_dims=2, input=SimpleNamespace(units=""))
    m = model_support.match_card(card, matching.SeriesFacts(modality="", is_dicom=False))
    assert m.ok and m.warnings


class _Doc(QObject):
    volumeChanged = Signal()
    loadFinished = Signal()

    def __init__(self):
        super().__init__()
        self.volume = object()


class _Panel(QObject):
    catalogReady = Signal()
    runFinished = Signal(str)

    def __init__(self, entries, verify_state):
        super().__init__()
        self.doc = _Doc()
        self.entries = entries
        self.verify_state = verify_state
        self.matches = {str(e.folder): SimpleNamespace(ok=True, score=1) for e in entries}
        self._catalog_loaded = True
        self.state = "idle"
        self.running = False
        self.ran: list[str] = []
        self._sel = None

    def refresh(self):
        pass

    def _usable(self, e):
        return e.card is not None

    def _volume_ready(self):
        return True

    def _rematch(self, select_best):
        pass

    def select_model(self, mid):
        self._sel = mid
        return True

    def set_method(self, m):
        pass

    def _gradcam_possible(self, card):
        return False

    def run(self):
        self.ran.append(self._sel)
        self.running = True

        def finish():
            self.running = False
            self.runFinished.emit("done")
        from PySide6.QtCore import QTimer
        QTimer.singleShot(0, finish)
        return True


def _entry(mid, verified, contains_code=False, trusted=False):
    card = SimpleNamespace(id=mid, task="classification")
    return SimpleNamespace(card=card, id=mid, folder=f"/m/{mid}", verified=verified, contains_code=contains_code,
                           trusted=trusted,
                           runnable_without_prompt=verified is True and (not contains_code or trusted))


def test_autorun_runs_only_models_runnable_without_prompt(qapp):
    from imaging_assist_ui.ai.demo_autorun import AutoRun

    entries = [_entry("a-ok", True), _entry("b-code", True, contains_code=True),
               _entry("c-trusted-code", True, contains_code=True, trusted=True), _entry("d-bad-sha", False),
               _entry("e-pending", None)]
    state = {f"/m/{m}": (v, "") for m, v in (("a-ok", True), ("b-code", True), ("c-trusted-code", True),
                                             ("d-bad-sha", False))}
    panel = _Panel(entries, state)
    win = SimpleNamespace(model_panel=panel, statusBar=lambda: SimpleNamespace(showMessage=lambda *a: None))
    auto = AutoRun(win, parent=panel)
    auto._kick()
    # the pending check is waited for, never run unverified
    assert wait_until(lambda: len(auto.finished) >= 4, 5), auto.finished
    assert "e-pending" not in panel.ran
    assert panel.ran == ["a-ok", "c-trusted-code"]
    done = dict(auto.finished)
    assert done["b-code"] == "skipped" and done["d-bad-sha"] == "error"
    assert any("b-code" in n and "code" in n for n in auto.notes)
    # its check passes: now it runs
    entries[4].verified = True
    entries[4].runnable_without_prompt = True
    state["/m/e-pending"] = (True, "")
    assert wait_until(lambda: auto.idle, 5)
    assert panel.ran == ["a-ok", "c-trusted-code", "e-pending"]
    auto._timer.stop()
