"""The AI model panel in the real main window, offscreen: tiny models registered through
the registry's added-folder mechanism (in a temporary config dir), run on the bundled demo
CT from the panel; scores, overlays, errors and cancel checked against the engine."""

from __future__ import annotations

import json
import os
import re
import time

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QUrl  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402

from _qt import open_window, wait_until  # noqa: E402
from conftest import ROOT  # noqa: E402

pytestmark = pytest.mark.gui

DEMO = ROOT / "imaging_assist" / "data" / "demo" / "ct_head_phantom"

COMMON = {"version": "1.0.0", "license": "CC0-1.0 (test model)", "not_for_clinical_use": True,
          "data": {"training": "none: weights set by hand for tests",
                   "validation": "the bundled demo CT phantom (28 slices)"}}


# =========================================================================== models
def density_classifier():
    """MONAI Classifier with hand-set weights: logit(hyperdense) = 100 * mean(relu(x - 0.6)) - 2
    on a [-160, 240] HU window, i.e. 'much tissue brighter than ~80 HU'.  Grad-CAM on
    ``net.layer_0`` (after its ReLU) therefore lights up the dense voxels."""
    import torch
    from monai.networks.nets import Classifier

    net = Classifier(in_shape=(1, 64, 64), classes=2, channels=(4, 4), strides=(2, 1), kernel_size=3,
                     num_res_units=0, act="relu", norm=None, dropout=None)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        c0 = net.net.layer_0.conv
        c0.weight[0, 0, 1, 1] = 1.0
        c0.bias[0] = -0.6
        net.net.layer_1.conv.weight[0, 0, 1, 1] = 1.0
        lin = net.final[1]
        n = lin.weight.shape[1] // 4  # features of channel 0 (channel-major flatten)
        lin.weight[1, :n] = 100.0 / n
        lin.bias[1] = -2.0
    return net.eval()


CLS_ARCH = {"library": "monai", "name": "Classifier",
            "kwargs": {"in_shape": [1, 64, 64], "classes": 2, "channels": [4, 4], "strides": [2, 1],
                       "kernel_size": 3, "num_res_units": 0, "act": "relu", "norm": None,
                       "dropout": None}}


def cls_card(**over):
    d = dict(COMMON, id="demo-dense-cls", name="Dense tissue on head CT (test classifier)",
             task="classification", modality=["CT"], body_part="BRAIN", spatial_dims=2,
             architecture=CLS_ARCH, labels=["normal", "hyperdense"],
             input={"channels": 1, "size": [64, 64], "units": "HU",
                    "intensity": [{"type": "window", "center": 40, "width": 400}]},
             thresholds={"hyperdense": {"threshold": 0.5, "sensitivity": 0.9, "specificity": 0.8,
                                        "data": "synthetic validation"}},
             metrics=[{"name": "AUC", "label": "hyperdense", "value": 0.91, "ci95": [0.86, 0.95],
                       "n": 120, "data": "synthetic validation"}],
             intended_use="Tests and demonstrations of the model panel only.",
             gradcam_layer="net.layer_0")
    d.update(over)
    return d


class PointwiseTissue:
    """3-class pointwise segmenter on a [-400, 1000] HU window: background below -100 HU,
    soft tissue up to 300 HU, bone above (argmax of three lines)."""

    @staticmethod
    def build():
        import torch
        import torch.nn as nn

        k = 40.0
        conv = nn.Conv3d(1, 3, 1)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor([-k, 0.0, k]).reshape(3, 1, 1, 1, 1))
            conv.bias.copy_(torch.tensor([k * 300 / 1400, 0.0, -k * 700 / 1400]))
        return nn.Sequential(conv).eval()


SEG_CARD = dict(COMMON, id="demo-tissue-seg3d", name="Soft tissue and bone (test 3D segmenter)",
                task="segmentation", modality="CT", spatial_dims=3,
                labels=["background", "soft tissue", "bone"],
                input={"channels": 1, "roi_size": [32, 32, 32], "units": "HU",
                       "intensity": {"type": "window", "center": 300, "width": 1400}},
                inference={"roi_multiple": 8, "overlap": 0.25},
                metrics=[{"name": "Dice", "label": "bone", "value": 0.97, "ci95": [0.95, 0.98],
                          "n": 28, "data": "threshold reference"}],
                intended_use="Tests of 3D segmentation overlays.")


def build_models(root):
    """lib/ with a good classifier, a 3D segmenter, a CR model, a corrupt copy and a broken
    card; returns the library folder."""
    import torch

    from imaging_assist.models.build import save_model_folder

    lib = root / "lib"
    save_model_folder(lib / "dense", cls_card(), density_classifier())
    save_model_folder(lib / "tissue3d", SEG_CARD, PointwiseTissue.build(), fmt="torchscript",
                      example_input=torch.zeros(1, 1, 8, 8, 8))
    save_model_folder(lib / "cxr", cls_card(id="cxr-toy", name="Chest X-ray toy", modality=["CR", "DX"],
                                            body_part="CHEST", input={
                                                "channels": 1, "size": [64, 64],
                                                "intensity": [{"type": "minmax"}]}),
                      density_classifier())
    bad = save_model_folder(lib / "corrupt", cls_card(id="demo-dense-corrupt"), density_classifier())
    w = bad / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    (lib / "broken").mkdir()
    (lib / "broken" / "model.json").write_text(json.dumps({"id": "broken", "task": "detection"}))
    return lib


# =========================================================================== fixtures
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("models")
    mp.setenv("IMAGING_ASSIST_CONFIG_DIR", str(root / "cfg"))  # never the real user config
    lib = build_models(root)
    from imaging_assist.models.registry import Registry

    Registry().add_folder(lib)  # the `imaging-assist models add` mechanism
    yield lib
    mp.undo()


@pytest.fixture(scope="module")
def win(qapp, tmp_path_factory, models):
    w = open_window(tmp_path_factory, str(DEMO))
    w.show_model_panel()
    panel = w.model_panel
    assert wait_until(lambda: panel._catalog_loaded, 60)
    yield w
    w.close()


@pytest.fixture
def panel(win):
    p = win.model_panel
    assert not p.running
    assert wait_until(lambda: all(p.verify_state.get(str(e.folder)) for e in p.entries
                                  if e.card is not None and not e.shadowed_by), 60)
    return p


def run_and_wait(panel, timeout=60.0) -> str:
    got = []
    panel.runFinished.connect(got.append)
    try:
        assert panel.run(), panel.error_text()
        assert wait_until(lambda: bool(got), timeout), f"no result after {timeout} s: {panel.status.text()}"
    finally:
        panel.runFinished.disconnect(got.append)
    return got[0]


def grab(view) -> np.ndarray:
    img = view.grab().toImage().convertToFormat(QImage.Format_RGB888)
    w, h = img.width(), img.height()
    arr = np.frombuffer(img.constBits(), np.uint8, count=img.bytesPerLine() * h).reshape(h, img.bytesPerLine())
    return arr[:, :w * 3].reshape(h, w, 3).copy()


def engine_result(folder, volume, **opts):
    from imaging_assist.inference.pipelines import RunOptions, run_model
    from imaging_assist.models.card import load_card
    from imaging_assist.models.loaders import load_model

    return run_model(load_model(load_card(folder)), volume, RunOptions(device="cpu", **opts))


# =========================================================================== tests
def test_lists_models_marks_matches_and_verification(win, panel, models):
    from imaging_assist_ui.ai.model_panel import FOLDER_ROLE

    rows = {panel._entry(panel.tree.topLevelItem(n).data(0, FOLDER_ROLE)).id: panel.tree.topLevelItem(n)
            for n in range(panel.tree.topLevelItemCount())}
    assert {"demo-dense-cls", "demo-tissue-seg3d", "cxr-toy", "demo-dense-corrupt", "broken"} <= set(rows)
    # CT BRAIN 3D series: the classifier (CT, BRAIN) fits best and is pre-selected; the CR model does not fit
    assert panel.current_entry().id == "demo-dense-cls"
    assert rows["demo-dense-cls"].text(0).startswith("★")
    assert rows["demo-tissue-seg3d"].text(0).startswith("★")
    assert not rows["cxr-toy"].text(0).startswith("★")
    assert "model is for CR/DX" in panel.matches[str(models / "cxr")].reason
    assert "CT · BRAIN · 3D, 28 slices" in panel.series_label.text()
    # verification column with the reason
    assert rows["demo-dense-cls"].text(4) == "✓"
    assert rows["demo-dense-corrupt"].text(4) == "✗"
    assert "do not match the sha256" in rows["demo-dense-corrupt"].toolTip(4)
    assert rows["broken"].text(4) == "✗" and "task: must be one of" in rows["broken"].toolTip(0)
    assert rows["demo-dense-cls"].text(1) == "class. 2D" and rows["demo-tissue-seg3d"].text(1) == "seg. 3D"
    # Grad-CAM is the default; devices offer Auto and CPU
    assert panel.method.currentText() == "Grad-CAM"
    assert [panel.device.itemData(i) for i in range(panel.device.count())][:2] == [None, "cpu"]


def test_classifier_scores_match_engine_and_heatmap_layer(win, panel, models):
    vol = win.doc.volume
    assert panel.select_model("demo-dense-cls")
    panel.set_method("gradcam")
    panel.set_device("cpu")
    n_layers = len(win.doc.layers)
    assert run_and_wait(panel) == "done", panel.error_text()
    res = panel.last_result
    ref = engine_result(models / "dense", vol)
    # the panel's result is the engine's, and the text shows exactly those numbers
    for lab in ref.probabilities:
        assert res.probabilities[lab] == pytest.approx(ref.probabilities[lab], abs=1e-6)
    from imaging_assist_ui.ai.model_support import decision_text
    shown = panel.shown_lines()
    for lab in ref.labels:
        line = decision_text(lab, ref.probabilities[lab], ref.decisions[lab])
        assert any(s.startswith(line) for s in shown), (line, shown)
    hyper = next(s for s in shown if s.startswith("hyperdense "))
    m = re.match(r"hyperdense (\d\.\d+) (≥|<) 0\.5 → (positive|negative)", hyper)
    assert m and float(m.group(1)) == pytest.approx(ref.probabilities["hyperdense"], abs=5e-4)
    assert (m.group(3) == "positive") == ref.decisions["hyperdense"]["positive"]
    # issue 14: the card's threshold figures come from validation (where it was chosen): not quoted
    assert "sensitivity 0.90" not in hyper and "validation figures are not quoted" in hyper
    assert any("over 28 slices" in s for s in shown)
    # device, timings and the faithfulness of the heat map are shown
    assert any(s.startswith("cpu · fp32") and "total" in s for s in shown)
    heat_line = next(s for s in shown if s.startswith("Grad-CAM · "))
    f = res.heatmaps[0].faithfulness["faithfulness"]
    assert f"faithfulness {f:+.2f}" in heat_line
    # the heat map is a layer on the volume grid, and it changes the rendered pixels
    assert len(win.doc.layers) == n_layers + 1
    layer = panel.result_layers[0]
    assert layer.kind == "heatmap" and layer.name.startswith("Grad-CAM: ")
    assert layer.array.shape == vol.array.shape[:3]
    k = int(np.nanargmax(np.nanmax(layer.array.reshape(layer.array.shape[0], -1), 1)))
    win.set_layout("single")
    win.doc.set_index(0, k)
    view = win.view_area.single
    view.repaint()
    on = grab(view)
    win.doc.layers.toggle(layer, False)
    view.repaint()
    off = grab(view)
    win.doc.layers.toggle(layer, True)
    view.repaint()
    assert np.abs(on.astype(int) - off.astype(int)).sum(-1).astype(bool).mean() > 0.01
    assert np.array_equal(grab(view), on)
    # the hottest voxels of the map are dense ones (the model's reason), not air
    hot = layer.array[k] >= np.nanpercentile(layer.array[k], 99)
    assert np.median(vol.array[k][hot]) > 80
    # the layer shows in the Overlays panel
    from imaging_assist_ui.radiology.layers_panel import LAYER_ROLE

    assert any(layer is win.layers_panel.tree.topLevelItem(i).data(0, LAYER_ROLE)
               for i in range(win.layers_panel.tree.topLevelItemCount()))
    # a 'slice' link moves the viewer there
    panel._anchor(QUrl("slice:3"))
    assert win.doc.position[0] == 3


def test_segmenter_volumes_labels_and_rerun_replaces_overlays(win, panel, models):
    vol = win.doc.volume
    assert panel.select_model("demo-tissue-seg3d")
    # TorchScript: Grad-CAM is not possible, so the panel switched to saliency
    assert panel.method.currentData() == "saliency"
    assert not panel.method.model().item(0).isEnabled()
    panel.set_method(None)
    assert run_and_wait(panel) == "done", panel.error_text()
    res = panel.last_result
    ref = engine_result(models / "tissue3d", vol)
    assert res.volume_ml == ref.volume_ml and ref.volume_ml["bone"] > 1
    shown = panel.shown_lines()
    for lab in ("soft tissue", "bone"):
        want = f"{lab}: {ref.volume_ml[lab]:.2f} mL ({ref.voxel_counts[lab]:,} voxels; {ref.spacing_source})"
        assert any(want in s for s in shown), (want, shown)
    seg = panel.result_layers[0]
    assert seg.kind == "label" and seg.array.shape == vol.array.shape[:3]
    assert {i: info.name for i, info in seg.labels.items()} == {1: "soft tissue", 2: "bone"}
    assert np.array_equal(seg.array, ref.label_map)
    # bone where the CT is above 300 HU
    assert (seg.array[vol.array > 400] == 2).mean() > 0.97
    # run again with saliency: the old overlay is replaced, a heat map comes along
    before = len(win.doc.layers)
    panel.set_method("saliency")
    panel.set_target("bone")
    assert run_and_wait(panel) == "done", panel.error_text()
    assert len(win.doc.layers) == before + 1  # label map replaced, heat map added
    assert seg not in win.doc.layers.layers
    heat = [l for l in panel.result_layers if l.kind == "heatmap"]
    assert len(heat) == 1 and heat[0].name == "Saliency: bone" and heat[0].array.shape == vol.array.shape[:3]
    assert any(s.startswith("Saliency · bone: faithfulness") for s in panel.shown_lines())


def test_sha_mismatch_and_invalid_card_are_one_line_errors(win, panel, models):
    n_layers = len(win.doc.layers)
    assert panel.select_model("demo-dense-corrupt")
    assert "do not match the sha256" in panel.details.text()
    assert run_and_wait(panel) == "error"
    msg = panel.error_text()
    assert "do not match the sha256" in msg and "\n" not in msg and "Traceback" not in msg
    assert panel.error.isVisible() and len(win.doc.layers) == n_layers
    # the broken card: selecting it explains why, Run is refused with one line
    for n in range(panel.tree.topLevelItemCount()):
        it = panel.tree.topLevelItem(n)
        if it.text(0) == "broken":
            panel.tree.setCurrentItem(it)
    assert not panel.run_btn.isEnabled()
    assert not panel.run()
    assert "task: must be one of" in panel.error_text() and "\n" not in panel.error_text()
    # the app keeps working: a good model still runs
    assert panel.select_model("demo-dense-cls")
    panel.set_method(None)
    assert run_and_wait(panel) == "done"
    assert panel.error_text() == ""
    assert win.doc.volume is not None and win.load_state == "done"


def test_wrong_modality_runs_manually_with_a_visible_warning(win, panel, models):
    """Issue 14: a model the card does not fit is refused with the reason; only the explicit
    research override runs it, with the override shown and the decisions withheld."""
    assert panel.select_model("cxr-toy")
    assert "Not made for this series" in panel.details.text()
    panel.set_method(None)
    assert not panel.run()
    assert "not made for this series" in panel.error_text() and "the series is CT" in panel.error_text()
    panel.override.setChecked(True)
    try:
        assert run_and_wait(panel) == "done", panel.error_text()
    finally:
        panel.override.setChecked(False)
    assert panel.warnings.isVisible()
    assert any("modality CT is not one model cxr-toy was made for" in w for w in panel.warning_texts())
    shown = " ".join(panel.shown_lines())
    assert "Research override" in shown and "Decisions withheld" in shown
    assert "positive" not in shown.replace("Research override", "")


def test_model_card_dialog(win, panel):
    assert panel.select_model("demo-dense-cls")
    dlg = panel.show_card()
    text = dlg.plain_text()
    for needle in ("NOT FOR CLINICAL USE", "Intended use", "Tests and demonstrations", "Training",
                   "none: weights set by hand", "AUC", "0.86 – 0.95", "Sensitivity", "0.9", "0.8",
                   "Licence", "CC0-1.0", "sha256 verified"):
        assert needle in text, needle
    dlg.close()


@pytest.fixture
def slow_runs(monkeypatch):
    """Slow every progress report of a run down to 0.2 s; yields the fractions seen."""
    import imaging_assist_ui.ai.model_panel as mp
    from imaging_assist.inference.jobs import Progress

    real = mp.run_inference
    seen = []

    def slow(model, volume, options, progress):
        def cb(f, m):
            seen.append(f)
            time.sleep(0.2)
            progress(f, m)
        return real(model, volume, options, Progress(cb, progress.cancel_event))

    monkeypatch.setattr(mp, "run_inference", slow)
    return seen


def test_cancel_stops_a_run(win, panel, slow_runs):
    """The engine checks the cancel flag between slice batches / windows: a slowed-down run
    (each progress report takes 0.2 s) stops soon after Cancel and adds nothing."""
    seen = slow_runs
    assert panel.select_model("demo-dense-cls")
    panel.set_method("gradcam")
    n_layers = len(win.doc.layers)
    got = []
    panel.runFinished.connect(got.append)
    try:
        assert panel.run()
        assert wait_until(lambda: len(seen) >= 2, 30)
        assert panel.cancel_btn.isEnabled() and not panel.run_btn.isEnabled()
        # the GUI thread is free while the model runs
        t = time.perf_counter()
        wait_until(lambda: False, 0.1)
        assert time.perf_counter() - t < 1.0  # blocked, it would wait out the slowed run (seconds)
        t_cancel = time.perf_counter()
        panel.cancel_btn.click()
        assert panel.status.text() == "Cancelling…"
        assert wait_until(lambda: bool(got), 20)
    finally:
        panel.runFinished.disconnect(got.append)
    assert got == ["cancelled"] and time.perf_counter() - t_cancel < 5
    assert panel.state == "cancelled" and "Cancelled" in panel.status.text()
    assert len(win.doc.layers) == n_layers and panel.last_result is None
    assert max(seen) < 1.0
    assert panel.run_btn.isEnabled()


def test_series_change_cancels_the_run(win, panel, slow_runs):
    seen = slow_runs
    assert panel.select_model("demo-dense-cls")
    n_layers = len(win.doc.layers)
    assert panel.run()
    job = panel.job
    assert wait_until(lambda: len(seen) >= 1, 30)
    win.doc.volumeChanged.emit()  # what showing another series does
    assert panel.state == "cancelled" and "series changed" in panel.status.text()
    assert wait_until(job.done, 20) and job.status == "cancelled"
    wait_until(lambda: False, 0.2)  # its late report is ignored
    assert len(win.doc.layers) == n_layers and panel.last_result is None and panel.run_btn.isEnabled()


def test_matching_rules(win, panel):
    from imaging_assist_ui.ai.model_support import SeriesFacts, match_card

    card = panel._entry(str(next(e.folder for e in panel.entries if e.id == "demo-dense-cls"))).card
    assert match_card(card, SeriesFacts("CT", "BRAIN", 1, False, "HU")).ok
    assert not match_card(card, SeriesFacts("MR", "", 20, True, "")).ok
    m = match_card(card, SeriesFacts("CT", "CHEST", 20, True, "HU"))
    assert not m.ok and "model is for BRAIN" in m.reason
    assert not match_card(card, None).ok
    seg = next(e.card for e in panel.entries if e.id == "demo-tissue-seg3d")
    assert "3D model" in match_card(seg, SeriesFacts("CT", "", 1, False, "HU")).reason
