"""``evaluation.json`` and ``evaluation.pdf`` of ``imaging-assist evaluate``.

The PDF uses the report look of :mod:`imaging_assist.export.report_pdf` (its page furniture,
headings and tables).  Curves (ROC,
precision-recall, reliability) are drawn straight into the PDF as vector lines: matplotlib is
only an optional extra (``train``), and a vector line is exact at any zoom.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .evaluate import MIN_GROUP, fmt


def _clean(o, top: bool = True):
    """JSON-safe: numpy scalars to Python, nan/inf to None, private keys dropped.  Private keys
    (``_arrays``, for the PDF) are only at the report's top level, where ``evaluate`` puts them:
    deeper dicts are keyed by data values too (subgroup ``groups`` such as ``_ICU``) and keep
    every key."""
    if isinstance(o, dict):
        return {k: _clean(v, False) for k, v in o.items() if not (top and str(k).startswith("_"))}
    if isinstance(o, (list, tuple)):
        return [_clean(v, False) for v in o]
    if isinstance(o, np.ndarray):
        return _clean(o.tolist(), False)
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return f if math.isfinite(f) else None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return o


def write_json(report: dict, out_dir: Path) -> Path:
    from ..outputs import written_beside  # a new temporary file (never a planted link), removed on any error

    p = Path(out_dir) / "evaluation.json"
    text = json.dumps(_clean(report), indent=2, allow_nan=False)
    with written_beside(p) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return p


# =========================================================================== PDF
def _doc(header_line: str):
    from ..export.report_pdf import _Doc  # the shared report look (issue 13)

    d = _Doc("A4", header_line)
    d.pdf.set_title("Imaging Assist local evaluation - NOT FOR CLINICAL USE")
    return d


def _plot(doc, x0, y0, w, h, title, xlabel, ylabel, series, diagonal=False):
    """A square plot with axes 0..1, grid at 0.2 and vector polylines ``series``:
    [(xs, ys, (r, g, b), label)]."""
    p = doc.pdf
    doc.font(8, True)
    p.set_xy(x0, y0 - 5)
    p.cell(w, 4, doc.t(title))
    p.set_draw_color(200, 200, 200)
    p.set_line_width(0.1)
    for k in range(6):
        v = k / 5
        p.line(x0 + v * w, y0, x0 + v * w, y0 + h)
        p.line(x0, y0 + h - v * h, x0 + w, y0 + h - v * h)
        doc.font(6)
        p.set_xy(x0 + v * w - 3, y0 + h + 0.5)
        p.cell(6, 3, f"{v:.1f}", align="C")
        p.set_xy(x0 - 7, y0 + h - v * h - 1.5)
        p.cell(6, 3, f"{v:.1f}", align="R")
    p.set_draw_color(0, 0, 0)
    p.set_line_width(0.25)
    p.rect(x0, y0, w, h)
    if diagonal:
        p.set_draw_color(150, 150, 150)
        p.set_dash_pattern(dash=1, gap=1)
        p.line(x0, y0 + h, x0 + w, y0)
        p.set_dash_pattern()
    doc.font(7)
    p.set_xy(x0, y0 + h + 3.5)
    p.cell(w, 3, doc.t(xlabel), align="C")
    ylabel = doc.t(ylabel)
    with p.rotation(90, x0 - 9, y0 + h / 2):
        # text() at absolute coordinates: before the rotation the label starts left of the page
        # edge for a plot near it (the ROC's), and set_x reads a negative x as from the right edge
        p.text(x0 - 9 - p.get_string_width(ylabel) / 2, y0 + h / 2 + 1, ylabel)
    for n, (xs, ys, col, label) in enumerate(series):
        pts = [(x0 + float(a) * w, y0 + h - float(b) * h) for a, b in zip(xs, ys)
               if a is not None and b is not None]
        p.set_draw_color(*col)
        p.set_line_width(0.45)
        if len(pts) > 1:
            p.polyline(pts)
        elif pts:
            p.circle(pts[0][0], pts[0][1], 0.8, style="D")
        if label:
            doc.font(6.5, False, col)
            p.set_xy(x0 + 2, y0 + 2 + 3.2 * n)
            p.cell(w - 4, 3, doc.t(label))
    doc.font(9)


def _metric_rows(m: dict) -> list[list[str]]:
    rows = [[name, fmt(m.get(name))] for name in ("AUC", "sensitivity", "specificity", "PPV", "NPV", "ECE")]
    return rows


def _hd95(m: dict, unit: str) -> str:
    """Mean HD95 with its interval, and how many cases it leaves out (an empty predicted or
    reference mask has no HD95): never a silently smaller mean."""
    s = fmt(m[f"HD95_{unit}"], 1)
    k = m.get("n_empty") or 0
    if k and (m[f"HD95_{unit}"] or {}).get("value") is not None:
        s += f"; {k} of {m['n']} left out (empty mask)"
    return s


def _ci_notes(doc, m: dict | None):
    """The one-line reasons an interval is not given (ci_notes)."""
    for n in (m or {}).get("ci_notes") or []:
        doc.para(n, 7.5, color=(90, 90, 90))


def _group_table(doc, sub: dict, seg: bool, unit: str = "mm"):
    rows = []
    for k, m in sub["groups"].items():
        flag = f"too small (<{MIN_GROUP})" if m.get("too_small") else ""
        if seg:
            rows.append([k, str(m["n"]), fmt(m["Dice"]), _hd95(m, unit), flag])
        else:
            rows.append([k, f"{m['n']} ({m['n_positive']}+)", fmt(m["AUC"]), fmt(m["sensitivity"]),
                         fmt(m["specificity"]), flag])
    if seg:
        doc.table(["group", "n", "Dice (95% CI)", f"HD95 {unit}", ""], rows, [30, 14, 40, 58, 26])
    else:
        doc.table(["group", "n (pos)", "AUC (95% CI)", "sensitivity", "specificity", ""], rows,
                  [26, 18, 38, 38, 38, 24], size=7.5)
    gap = sub.get("largest_sensitivity_gap")
    if gap:
        ci = f" (95% CI {gap['ci95'][0]:.3f} to {gap['ci95'][1]:.3f})" if gap.get("ci95") else ""
        if gap.get("ci95") and str(gap.get("ci_method", "")).startswith("Newcombe"):
            ci = f" (95% CI {gap['ci95'][0]:.3f} to {gap['ci95'][1]:.3f}, Newcombe hybrid score)"
        elif not gap.get("ci95") and gap.get("note"):
            ci = f" ({gap['note']})"
        if gap.get("p_value_equal_sensitivity") is not None:
            ci = (f" (picked among the groups after seeing the data; permutation test of equal sensitivity: "
                  f"p = {gap['p_value_equal_sensitivity']:.3g})")
        doc.para(f"Largest sensitivity gap: {gap['groups'][0]} vs {gap['groups'][1]} = "
                 f"{gap['value']:.3f}{ci}", 8.5)


def write_pdf(report: dict, out_dir: Path) -> Path:
    m = report["model"]
    doc = _doc(f"Local evaluation · {m['id']} {m['version']}")
    p = doc.pdf
    p.add_page()
    doc.para("Local evaluation of a research model", 15, True, (20, 40, 90))
    d = report["data"]
    doc.para(f"Model {m['id']} version {m['version']} ({m['task']}) on {d['n_analysed']} of "
             f"{d['n_matched']} matched images ({d['n_clusters']} {d['cluster_unit']}), "
             f"labels from {Path(d['labels']).name}, {report['created']}.", 9)
    doc.para(f"Intervals: {report['ci_method']}.", 8, color=(60, 60, 60))
    for n in report.get("notes") or []:
        doc.para(f"Note: {n}", 8, color=(120, 60, 0))
    ood = report.get("ood") or {}
    if ood.get("available"):
        doc.para(f"Out-of-distribution: {ood['n_flagged']} of {ood['n']} images flagged as outside "
                 "what this model was trained on; metrics without them are given below.", 9, True)
    else:
        doc.para("Out-of-distribution: not available for these results.", 8.5)
    if "operating_points" in report:
        _classification_pdf(doc, report)
    else:
        _segmentation_pdf(doc, report)
    out = Path(out_dir) / "evaluation.pdf"
    if doc.unsupported:  # as the analysis report: printed as "?", said, never dropped silently
        doc.box(f"{len(doc.unsupported)} character(s) could not be shown by the report's font "
                f"(U+{', U+'.join(f'{ord(c):04X}' for c in sorted(doc.unsupported)[:12])}) and are "
                "printed as '?': compare group names with evaluation.json.", size=8)
    from ..outputs import written_beside  # as evaluation.json

    with written_beside(out) as tmp:
        p.output(str(tmp))
    return out


def _classification_pdf(doc, report):
    p = doc.pdf
    pos = report["positive_label"]
    ops = report["operating_points"]
    doc.heading(f"'{pos}' at two operating points")
    hdr, rows = ["metric"], {}
    names = ("AUC", "sensitivity", "specificity", "PPV", "NPV", "ECE")
    for key, title in (("card", "card threshold"), ("site", "site threshold"),
                       ("target_sensitivity", "target-sensitivity threshold")):
        op = ops.get(key) or {}
        if op.get("threshold") is None:
            continue
        hdr.append(f"{title} {op['threshold']:.4g}")
        for name in names:
            rows.setdefault(name, [name]).append(fmt(op["overall"][name]))
    doc.table(hdr, list(rows.values()), [30] + [150 / (len(hdr) - 1)] * (len(hdr) - 1))
    _ci_notes(doc, ops["card"]["overall"])
    if ops.get("site"):
        doc.para(f"Saved {ops['site']['source']}.", 8, color=(90, 90, 90))
    t = ops.get("target_sensitivity") or {}
    if t.get("threshold") is not None:
        doc.para(f"The target-sensitivity threshold ({t['target']:.2f}) was chosen on this same data: "
                 "its figures are optimistic for new patients.", 8, color=(90, 90, 90))
    ov = ops["card"]["overall"]
    doc.para(f"n = {ov['n']} ({ov['n_positive']} positive, prevalence {ov['prevalence']:.1%}). "
             "PPV and NPV hold at this prevalence only.", 8.5)
    cm = ov["confusion_matrix"]["counts"]
    doc.heading("Confusion matrix at the card threshold", 10)
    doc.table(["reference \\ model", "negative", "positive"],
              [["negative", str(cm[0][0]), str(cm[0][1])], ["positive", str(cm[1][0]), str(cm[1][1])]],
              [40, 30, 30])
    if ov.get("roc_curve"):
        doc.need(80)
        y0 = p.get_y() + 8
        w = 50
        roc = ov["roc_curve"]
        _plot(doc, p.l_margin + 10, y0, w, w, f"ROC (AUC {fmt(ov['AUC'])})", "1 - specificity",
              "sensitivity", [(roc["fpr"], roc["tpr"], (20, 60, 160), "")], diagonal=True)
        pr = ov["pr_curve"]
        _plot(doc, p.l_margin + 72, y0, w, w, f"Precision-recall (AP {fmt(ov['average_precision'])})",
              "recall", "precision", [(pr["recall"], pr["precision"], (160, 60, 20), "")])
        rel = ov["reliability"]
        xs = [c for c, o in zip(rel["confidence"], rel["observed"]) if c is not None]
        ys = [o for c, o in zip(rel["confidence"], rel["observed"]) if c is not None]
        _plot(doc, p.l_margin + 134, y0, w, w, f"Reliability (ECE {fmt(ov['ECE'])})",
              "predicted probability", "observed frequency", [(xs, ys, (20, 120, 60), "")], diagonal=True)
        p.set_y(y0 + w + 10)
    for g, sub in (ops["card"].get("subgroups") or {}).items():
        doc.heading(f"Subgroups by {g} (card threshold)", 10)
        _group_table(doc, sub, False)
    if "without_ood_flagged" in ops["card"]:
        doc.heading("Without images flagged out-of-distribution", 10)
        w_o = ops["card"]["without_ood_flagged"]
        if w_o:
            doc.table(["metric", "all images", "without flagged"],
                      [[r[0], r[1], fmt(w_o.get(r[0]))] for r in _metric_rows(ov)], [30, 70, 70])
        else:
            doc.para("Every image was flagged.", 9)


def _segmentation_pdf(doc, report):
    unit = report["hd95_unit"]
    ov = report["overall"]
    doc.heading("Segmentation")
    doc.para(f"{report['comparison']}.", 8.5)
    if report.get("hd95_note"):
        doc.para(report["hd95_note"], 8.5, True, (120, 60, 0))
    doc.table(["n", "Dice (95% CI)", f"HD95 {unit} (95% CI)"],
              [[str(ov["n"]), fmt(ov["Dice"]), _hd95(ov, unit)]], [20, 60, 80])
    if ov.get("n_empty") and (ov[f"HD95_{unit}"] or {}).get("note"):
        doc.para(f"HD95: {ov[f'HD95_{unit}']['note']}.", 8, color=(120, 60, 0))
    _ci_notes(doc, ov)
    for g, sub in (report.get("subgroups") or {}).items():
        doc.heading(f"Subgroups by {g}", 10)
        _group_table(doc, sub, True, unit)
    if "without_ood_flagged" in report and report["without_ood_flagged"]:
        w_o = report["without_ood_flagged"]
        doc.heading("Without images flagged out-of-distribution", 10)
        doc.table(["n", "Dice", f"HD95 {unit}"],
                  [[str(w_o["n"]), fmt(w_o["Dice"]), _hd95(w_o, unit)]], [20, 60, 80])
