"""PDF report, audit fixes (s22): long valid header values overprinting the page header and the
patient block, the heat-map legend's fade, small slide areas printed as 0.0 and the slide
overview's class colours, a probability printed past its threshold, the ROC plot's missing
y label in evaluation.pdf, the lowercase reason after "no decision is given." and the
de-identification note.  Text positions come from poppler's pdftotext -bbox."""

from __future__ import annotations

import itertools
import math
import re
import subprocess
from pathlib import Path

import numpy as np

from conftest import ROOT
from test_export_report import _tool, flat, pdf_info, pdf_pages_text

from imaging_assist.export.report_pdf import (_Doc, _colorbar, _fmt_p, build_report, deidentify_header,
                                              header_from_tags, write_report_pdf)

MM = 72 / 25.4  # PDF points per mm
LONG_NAME = "Wolfeschlegelsteinhausenbergerdorff^Maximiliana Alexandra Konsta"  # PN: 64 characters
LONG_ID = "P" + "1234567890" * 6 + "ABC"  # LO: 64 characters
LONG_DESC = "CT CHEST ABDOMEN PELVIS WITH AND WITHOUT CONTRAST LOW DOSE PROTO"  # LO: 64 characters


def _words(pdf: Path, page: int) -> tuple[float, list[tuple[float, float, float, float, str]]]:
    """(page width, [(x0, y0, x1, y1, word)]) in points."""
    x = subprocess.run([_tool("pdftotext"), "-bbox", "-f", str(page), "-l", str(page), str(pdf), "-"],
                       check=True, capture_output=True, text=True).stdout
    pw = float(re.search(r'<page width="([\d.]+)"', x).group(1))
    return pw, [(float(a), float(b), float(c), float(d), w) for a, b, c, d, w in re.findall(
        r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">([^<]*)</word>', x)]


def _layout_faults(pdf: Path, page: int) -> list[str]:
    """Words printed over each other, or past the page's 14 mm side margins."""
    pw, words = _words(pdf, page)
    bad = [f"{a[4]!r} over {b[4]!r}" for a, b in itertools.combinations(words, 2)
           if min(a[2], b[2]) - max(a[0], b[0]) > 1 and min(a[3], b[3]) - max(a[1], b[1]) > 2]
    bad += [f"{w[4]!r} past the margin" for w in words if w[0] < 14 * MM - 1 or w[2] > pw - 14 * MM + 1]
    return bad


def _raw_text(pdf: Path, page: int = 1) -> str:
    """A page's text in drawing order (-raw: the two columns of a block never interleaved)."""
    return subprocess.run([_tool("pdftotext"), "-raw", "-f", str(page), "-l", str(page), str(pdf), "-"],
                          check=True, capture_output=True, text=True).stdout


def _squeeze(s: str) -> str:
    return "".join(s.split())


def _report(header: dict, items=(), notes=(), deidentified=False) -> dict:
    return {"studies": [{"header": header, "items": list(items)}], "measurements": [], "cards": [],
            "warnings": list(notes), "software": {}, "deidentified": deidentified}


# --------------------------------------------------------------------------- 1: long header values
def test_long_valid_header_values_are_printed_whole_and_overprint_nothing(tmp_path):
    h = header_from_tags({"PatientName": LONG_NAME, "PatientID": LONG_ID, "PatientBirthDate": "19600101",
                          "PatientSex": "F", "PatientAge": "064Y", "StudyDate": "20240305",
                          "StudyDescription": LONG_DESC, "AccessionNumber": "A" * 16, "Modality": "CR"},
                         doubtful_name=True)  # the "⚠ character set" marker makes the name 96 characters
    notes = [f"note {n} of the run, long enough to fill the first page and go on to the next" for n in range(80)]
    pdf = write_report_pdf(_report(h, notes=notes), tmp_path / "long.pdf")
    assert pdf_info(pdf)["Pages"] >= 2
    for page in (1, 2):
        assert _layout_faults(pdf, page) == [], page
    page1 = _squeeze(_raw_text(pdf))
    name = _squeeze(h["patient_name"])
    assert "characterset:maybewrong" in name
    # every value whole in the patient block (the page header prints name and ID once more)
    assert page1.count(name) == 2 and page1.count(LONG_ID) == 2 and _squeeze(LONG_DESC) in page1
    # the continuation pages' header: the banner alone on its row, name, ID and date whole under it
    _, words = _words(pdf, 2)
    top = [w for w in words if w[3] < 22 * MM]
    banner = [w for w in top if w[4] in ("NOT", "FOR", "CLINICAL", "USE")]
    assert len(banner) == 4
    assert not [w for w in top if w not in banner and w[1] < max(b[3] for b in banner)]
    top_text = "".join(w[4] for w in top)
    assert name in top_text and LONG_ID in top_text and "2024-03-05" in top_text


def test_a_header_line_too_long_for_two_lines_is_shortened_visibly(tmp_path):
    doc = _Doc("A4", "Name " * 80 + "END")
    doc.pdf.add_page()
    doc.para("body text", 9)
    doc.pdf.output(str(tmp_path / "h.pdf"))
    assert _layout_faults(tmp_path / "h.pdf", 1) == []
    text = pdf_pages_text(tmp_path / "h.pdf")[0]
    assert "…" in text and "END" not in text and "body text" in text


# --------------------------------------------------------------------------- 2: heat-map legend
def test_heat_map_legend_says_the_fade_the_picture_is_drawn_with(tmp_path):
    from types import SimpleNamespace

    from imaging_assist.colormaps import DEFAULT_HEAT_OPACITY, DEFAULT_HEAT_THRESHOLD
    from imaging_assist.export.report_pdf import capture
    from imaging_assist.inference.results import overlay_rgb
    from imaging_assist.volume import Volume

    # a flat grey image and a heat map that ramps 0 -> 1 across the columns
    base = np.full((1, 8, 201), 100.0, np.float32)
    heat = np.tile(np.linspace(0, 1, 201, dtype=np.float32), (8, 1))
    vol = Volume(array=base, spacing=(1.0, 1.0, 1.0))
    item = {"model": "x", "task": "classification", "kind": "image", "probabilities": {"a": 0.9},
            "heatmaps": [{"label": "a", "method": "gradcam", "key_slice": 0}]}
    cap = capture(item, vol, result=SimpleNamespace(label_map=None, heatmaps=[SimpleNamespace(array=heat[None])]))
    rep = build_report({"items": [item]}, captured={0: cap}, load_missing=False, cards={"x": None})
    text = " ".join(_raw_text(write_report_pdf(rep, tmp_path / "heat.pdf")).split())
    m = re.search(r"below (\d+) % of it not drawn \(grey in the bar\), opacity rising to (\d+) % at the maximum",
                  text)
    assert m, text
    assert "below 5 %" not in text
    said = int(m.group(1)) / 100
    assert said == DEFAULT_HEAT_THRESHOLD and int(m.group(2)) / 100 == DEFAULT_HEAT_OPACITY
    # what the picture does: a 0 -> 1 ramp is tinted from the said fraction of its maximum on
    tinted = (overlay_rgb(base[0], heat_slice=heat, volume=vol, k=0)
              != overlay_rgb(base[0], volume=vol, k=0)).any(-1).any(0)
    assert said <= heat[0, int(np.argmax(tinted))] <= said + 0.02  # the faintest tint rounds away
    # and the colour bar shows the part below it as not drawn
    bar = _colorbar("inferno", 100, threshold=said)
    below, above = bar[0, :int(said * 100) - 1], bar[0, int(said * 100) + 1:]
    assert (below == below[0]).all() and (below[0] == below[0][0]).all()  # one grey
    assert len({tuple(c) for c in above}) > 50  # the colour map


# --------------------------------------------------------------------------- 3: slide areas and legend
def test_small_slide_areas_never_print_as_zero_and_the_overview_has_its_colours(tmp_path):
    from PIL import Image

    from imaging_assist.colormaps import label_color

    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(tmp_path / "ov.png")
    labels = ["adenocarcinoma", "benign", "squamous_cell_carcinoma"]
    item = {"kind": "slide", "model": "path-lung-tissue", "model_version": "1.0.0", "source": "/x/s.svs",
            "labels": labels, "areas": {"adenocarcinoma": 0.024586, "benign": 0.48051,
                                        "squamous_cell_carcinoma": 0.0},
            "area_unit": "mm2", "files": {"overview_png": "ov.png"}}
    pdf = write_report_pdf(build_report({"items": [item]}, base_dir=tmp_path), tmp_path / "s.pdf")
    lines = [" ".join(ln.split()) for ln in pdf_pages_text(pdf)[0].splitlines()]
    assert "adenocarcinoma 0.0246" in lines and "benign 0.481" in lines and "squamous cell carcinoma 0" in lines
    text = flat(pdf_pages_text(pdf))
    assert "in the colour of its most probable class" in text
    assert "adenocarcinoma benign squamous cell carcinoma" in text.split("most probable class", 1)[1]
    subprocess.run([_tool("pdftoppm"), "-r", "100", "-png", "-f", "1", "-l", "1", str(pdf), str(tmp_path / "p")],
                   check=True, capture_output=True)
    px = np.asarray(Image.open(next(tmp_path.glob("p-*.png"))).convert("RGB")).reshape(-1, 3)
    for n in range(len(labels)):  # each class's square in the overview's colour
        assert (px == np.array(label_color(n + 1), np.uint8)).all(1).sum() >= 20, labels[n]
    # any size: never "0" unless it is 0, within 0.5 % of the value
    from imaging_assist.export.report_pdf import _fmt_size

    for v in (0.024586, 0.00001234, 0.5, 1.25, 12.345, 99.96, 1234.56, 8314.0):
        s = _fmt_size(v)
        assert float(s.replace(",", "")) != 0 and abs(float(s.replace(",", "")) - v) <= 0.005 * v, (v, s)
    assert _fmt_size(0.0) == "0"


# --------------------------------------------------------------------------- 4: probability vs threshold
def test_a_probability_never_prints_on_the_other_side_of_its_threshold(tmp_path):
    item = {"model": "cxr-pneumonia", "model_version": "1.0.0", "task": "classification", "kind": "image",
            "source": "x.png", "probabilities": {"pneumonia": 0.7476, "normal": 0.2524},
            "decisions": {"pneumonia": {"threshold": 0.7477, "positive": False}},
            "nodules": [{"id": "N1", "found": True, "p_malignant": 0.7476, "threshold": 0.7477,
                         "decision": {}, "center_lps": [1.0, 2.0, 3.0]}]}
    pdf = write_report_pdf(build_report({"items": [item]}, load_missing=False), tmp_path / "p.pdf")
    lines = [" ".join(ln.split()) for ln in pdf_pages_text(pdf)[0].splitlines()]
    assert any(ln.startswith("pneumonia 0.7476 0.7477 negative") for ln in lines), lines
    assert "0.7476 < 0.7477: negative" in flat(pdf_pages_text(pdf))
    rng = np.random.default_rng(0)
    for t in (0.7477, 0.5, 0.1722, 0.95, 0.333333):
        for p in np.r_[t + rng.normal(0, 1e-3, 200), t - 1e-9, t + 1e-9, t, math.nextafter(t, 0)]:
            p = float(np.clip(p, 0, 1))
            shown = float(_fmt_p(p, t))
            assert (shown >= float(f"{t:g}")) == (p >= t), (p, t, _fmt_p(p, t))
    assert _fmt_p(0.1234) == "0.123" and _fmt_p(0.9, 0.5) == "0.900"


# --------------------------------------------------------------------------- 5: ROC y label
def test_the_roc_plots_y_label_is_on_the_page(tmp_path):
    from imaging_assist.validation.evaluate_report import _doc, _plot

    for x0 in (24, 44):  # 24 mm: the ROC plot of evaluation.pdf (p.l_margin + 10)
        d = _doc("t")
        d.pdf.add_page()
        _plot(d, x0, 60, 50, 50, "ROC", "1 - specificity", "sensitivity", [([0, 1], [0, 1], (0, 0, 0), "")])
        d.pdf.output(str(tmp_path / f"plot{x0}.pdf"))
        pw, words = _words(tmp_path / f"plot{x0}.pdf", 1)
        lab = [w for w in words if w[4] == "sensitivity" and w[3] - w[1] > w[2] - w[0]]  # vertical
        assert len(lab) == 1, (x0, words)
        x_a, y_a, x_b, y_b, _ = lab[0]
        assert 0 < x_a and x_b < x0 * MM  # left of the plot, on the page
        assert abs((y_a + y_b) / 2 - 85 * MM) < 2  # centred on the plot's height


# --------------------------------------------------------------------------- 6: OOD box
def test_the_reasons_after_no_decision_is_given_are_a_sentence(tmp_path):
    item = {"model": "cxr-lung-seg", "model_version": "1.0.0", "task": "segmentation", "kind": "image",
            "source": "x.png", "ood": {"flagged": True, "score": 5.84, "threshold": 2.86,
                                       "reasons": ["image features unlike the training images"]}}
    text = flat(pdf_pages_text(write_report_pdf(build_report({"items": [item]}, load_missing=False),
                                                tmp_path / "o.pdf")))
    assert "no decision is given. Reason: image features unlike the training images." in text
    item["ood"]["reasons"].append("a second reason")
    text = flat(pdf_pages_text(write_report_pdf(build_report({"items": [item]}, load_missing=False),
                                                tmp_path / "o2.pdf")))
    assert "no decision is given. Reasons: image features unlike the training images; a second reason." in text


# --------------------------------------------------------------------------- 7: de-identification note
def test_the_deidentification_note_names_everything_removed(tmp_path):
    h = deidentify_header(header_from_tags({"PatientName": "Doe^Jane", "PatientID": "P1", "PatientSex": "F",
                                            "PatientAge": "054Y", "StudyDescription": "CHEST",
                                            "Modality": "CR"}))
    text = flat(pdf_pages_text(write_report_pdf(_report(h, deidentified=True), tmp_path / "d.pdf")))
    note = text.split("De-identified:", 1)[1].split(")", 1)[0]
    for what in ("name", "ID", "birth date", "sex", "age", "accession", "study date", "study description"):
        assert what in note, what
    assert "F / 54 years" not in text and "CHEST" not in text
    doc = " ".join((ROOT / "docs" / "report.md").read_text().split())
    assert "keeps sex" not in doc and "sex, age" in doc.split("### De-identified reports", 1)[1][:400]
