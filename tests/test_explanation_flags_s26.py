"""The engine's verdict on a heat map and its explanation region is the same wherever it is read.

* The explanation region's quality checks (the lungs found by cxr-lung-seg behind "x% of the
  pneumonia heat map lies inside the lungs") were made only when analyze wrote results.json: the
  viewer's result text read the region without them and said a share inside slivers of lungs as
  if it meant something, and flagged the map "mostly outside the lungs" on that share.
* A map the viewer hides as flagged (negative faithfulness, mostly outside the region) was
  written by analyze, batch and the report without that verdict; ``heatmaps[].flags`` now holds
  it, the console and the report say it.
* The region segmenter's own warning (outside what it was trained on) was in results.json only:
  the region line says it.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED, need

CHILD = SHARED / "cxr" / "pneumonia_kermany" / "test" / "PNEUMONIA" / "person100_bacteria_475.jpeg"
DEMO_AP = ROOT / "imaging_assist" / "data" / "demo" / "chest_xray" / "cxr_01_ap.dcm"


@pytest.fixture(scope="module")
def child_result():
    from imaging_assist.explain.methods import ExplainConfig
    from imaging_assist.explain.regions import RegionExplainer
    from imaging_assist.inference.images import read_image
    from imaging_assist.inference.options import RunOptions
    from imaging_assist.inference.pipelines import run_model
    from imaging_assist.models.loaders import load_model
    from imaging_assist.models.registry import Registry

    card = Registry().get("cxr-pneumonia").card
    vol = read_image(need(CHILD))
    res = run_model(load_model(card, "cpu"), vol,
                    RunOptions(device="cpu", explain=ExplainConfig("gradcam", faithfulness=False)))
    RegionExplainer(card, device="cpu").apply(res, vol)
    return res, card


def test_the_regions_quality_is_on_the_result_the_viewer_reads(child_result):
    from imaging_assist.explain.flags import heatmap_flags
    from imaging_assist.inference.checks import apply_trust_checks

    res, card = child_result
    q = res.explanation_region.get("quality")
    assert q and q["checked"] and not q["passed"], res.explanation_region
    said = [w for w in res.warnings if "fail its quality checks" in w and "not meaningful" in w]
    assert len(said) == 1
    # the share inside slivers is not a reason to flag the map (the region's own warning says why)
    assert not any("mostly outside" in f for f in heatmap_flags(res.heatmaps[0], res, card))
    # results.json as analyze writes it: the verdict once, not twice
    d = res.to_dict()
    d["heatmaps"] = [h.to_dict() for h in res.heatmaps]
    apply_trust_checks(d, res, card, [])
    assert d["explanation_region"]["quality"] == q
    assert sum("fail its quality checks" in w for w in d["warnings"]) == 1
    assert sum("fail its quality checks" in w for w in d["explanation_region"]["warnings"]) == 1


def test_the_viewers_result_text_says_the_share_is_not_meaningful(qapp, child_result):
    import re

    from imaging_assist_ui.ai.model_panel import result_html

    res, card = child_result
    text = re.sub(r"<[^>]+>", "", result_html(res, card, 0.1))
    assert "NOT MEANINGFUL" in text, text
    assert "QUALITY CHECK FAILED" not in text  # the failures once, not twice
    assert "mostly outside the lungs" not in text


def test_analyze_writes_and_says_a_flagged_map_and_the_regions_own_warning(tmp_path):
    out = tmp_path / "o"
    env_cfg = {"IMAGING_ASSIST_CONFIG_DIR": str(tmp_path / "cfg"), "IMAGING_ASSIST_DATA_DIR": str(tmp_path / "data")}
    import os

    p = subprocess.run([sys.executable, "-m", "imaging_assist", "analyze", str(DEMO_AP), "--model",
                        "cxr-pneumonia", "--explain", "gradcam", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, **env_cfg})
    assert p.returncode == 0, p.stderr
    (item,) = json.loads((out / "results.json").read_text())["items"]
    (h,) = item["heatmaps"]
    # this film's map: negative faithfulness, a third of it inside the lungs
    assert h["faithfulness"]["faithfulness"] < 0 and item["explanation_region"]["fraction_inside"] < 0.5
    assert any(f.startswith("negative faithfulness") for f in h["flags"])
    assert any(f.startswith("mostly outside the lungs") for f in h["flags"])
    lines = p.stderr.splitlines()
    warn = [ln for ln in lines if ln.startswith("warning: ") and "map of pneumonia is flagged" in ln]
    assert len(warn) == 1 and "negative faithfulness" in warn[0] and "mostly outside the lungs" in warn[0]
    # the lung segmenter called this film outside its training population: the region line says so
    assert any("cxr-lung-seg (region): outside what this model was trained on" in w
               for w in item["explanation_region"]["warnings"])
    line = next(ln for ln in lines if "heat map lies inside the lungs" in ln)
    assert "caution, cxr-lung-seg (region): outside what this model was trained on" in line
    text = subprocess.run(["pdftotext", str(out / "report.pdf"), "-"], capture_output=True, text=True,
                          check=True).stdout
    flat = " ".join(text.split())
    assert "The Grad-CAM map of pneumonia is flagged (the viewer hides it): negative faithfulness" in flat
    assert "lies inside the lungs (they cover 30% of the image) - caution, cxr-lung-seg" in flat  # may break a page
