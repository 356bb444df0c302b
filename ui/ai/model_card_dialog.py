"""The model card of a registered model, for people: intended use, NOT FOR CLINICAL USE,
training and validation data, metrics with confidence intervals, operating thresholds
with their sensitivity/specificity, licence, and where the weights come from."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout

from .model_support import esc
from ..shared.theme import ERROR_BG, ERROR_FG, MUTED, TEXT


def _num(v, digits=4) -> str:
    """Four significant digits: an AUC of 0.9995 must not read as 1."""
    if v is None:
        return "—"
    try:
        return f"{float(v):.{digits}g}"
    except (TypeError, ValueError):
        return esc(v)


def _splits_table(splits, th: str, td: str) -> list[str]:
    """``data.splits``: one row per split, its counts (images, patients, per class) as columns."""
    if not isinstance(splits, dict) or not splits:
        return []
    rows = {str(k): v for k, v in splits.items() if isinstance(v, dict)}
    cols: list[str] = []
    for v in rows.values():
        cols += [str(k) for k in v if str(k) not in cols and isinstance(v[k], (int, float, str))]
    if not rows or not cols:
        return []
    out = ["<table cellspacing=0><tr>" + f"<th {th}>Split</th>" + "".join(f"<th {th}>{esc(k)}</th>" for k in cols)
           + "</tr>"]
    for name, v in rows.items():
        out.append(f"<tr><td {td}>{esc(name)}</td>" + "".join(
            f"<td {td}>{esc(v.get(k, '—'))}</td>" for k in cols) + "</tr>")
    return out + ["</table>"]


def card_html(card, entry=None) -> str:
    """HTML of a :class:`~imaging_assist.models.card.ModelCard` (and its registry entry)."""
    c = card
    th = f"style='text-align:left; color:{MUTED}; padding:3px 10px 3px 0; font-weight:600'"
    td = "style='padding:3px 10px 3px 0'"
    out = [f"<div style='color:{TEXT}'>",
           f"<h2 style='margin:0 0 2px 0'>{esc(c.name)}</h2>",
           f"<div style='color:{MUTED}'>{esc(c.id)} · version {esc(c.version)} · {esc(c.task)} · "
           f"{c.spatial_dims}D · {esc('/'.join(c.modality))}"
           + (f" · {esc(c.body_part)}" if c.body_part else "") + f" · {esc(c.format)}</div>",
           f"<p style='background:{ERROR_BG}; color:{ERROR_FG}; padding:6px; font-weight:700; "
           f"margin:10px 0'>&nbsp;NOT FOR CLINICAL USE — research and teaching only.&nbsp;</p>",
           "<h3>Intended use</h3>", f"<p>{esc(c.intended_use)}</p>"]
    if c.description:
        out.append(f"<p>{esc(c.description)}</p>")
    raw = getattr(c, "raw", None) or {}
    from imaging_assist.models.card import card_limitations

    lims = card_limitations(c)
    if lims:
        out.append("<h3>Known limitations and failure modes</h3><ul style='margin-top:0'>"
                   + "".join(f"<li>{esc(x)}</li>" for x in lims) + "</ul>")
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    out += ["<h3>Data</h3>", "<table cellspacing=0>",
            f"<tr><th {th}>Training</th><td {td}>{esc(c.training_data or '—')}</td></tr>",
            f"<tr><th {th}>Validation</th><td {td}>{esc(c.validation_data or '—')}</td></tr>"]
    for key, title in (("test", "Test"), ("split_rule", "Split")):
        if isinstance(data.get(key), str):
            out.append(f"<tr><th {th}>{title}</th><td {td}>{esc(data[key])}</td></tr>")
    out.append("</table>")
    out += _splits_table(data.get("splits"), th, td)
    out.append("<h3>Outputs</h3>")
    if c.task == "segmentation":
        labs = ", ".join(f"{i} = {esc(n)}" for i, n in enumerate(c.labels))
    else:
        labs = ", ".join(esc(n) for n in c.labels)
    out.append(f"<p>{labs} <span style='color:{MUTED}'>({esc(c.activation)})</span></p>")
    out.append("<h3>Metrics</h3>")
    if c.metrics:
        out.append("<table cellspacing=0><tr>" + "".join(
            f"<th {th}>{h}</th>" for h in ("Metric", "Label", "Value", "95 % CI", "n", "Data")) + "</tr>")
        for m in c.metrics:
            ci = m.get("ci95")
            ci_s = f"{_num(ci[0])} – {_num(ci[1])}" if ci else "—"
            out.append(f"<tr><td {td}>{esc(m.get('name', ''))}</td><td {td}>{esc(m.get('label') or '—')}</td>"
                       f"<td {td}><b>{_num(m.get('value'))}</b></td><td {td}>{ci_s}</td>"
                       f"<td {td}>{esc(m.get('n') if m.get('n') is not None else '—')}</td>"
                       f"<td {td}>{esc(m.get('data') or '—')}</td></tr>")
        out.append("</table>")
    else:
        out.append(f"<p style='color:{MUTED}'>The card reports no metrics.</p>")
    out.append("<h3>Operating thresholds</h3>")
    if c.thresholds:
        out.append("<table cellspacing=0><tr>" + "".join(
            f"<th {th}>{h}</th>" for h in ("Label", "Threshold", "Sensitivity", "Specificity", "Measured on"))
            + "</tr>")
        for lab, t in c.thresholds.items():
            out.append(f"<tr><td {td}>{esc(lab)}</td><td {td}><b>{_num(t.threshold)}</b></td>"
                       f"<td {td}>{_num(t.sensitivity)}</td><td {td}>{_num(t.specificity)}</td>"
                       f"<td {td}>{esc(t.data or '—')}</td></tr>")
        out.append("</table>")
    else:
        out.append(f"<p style='color:{MUTED}'>No operating thresholds: probabilities are shown "
                   "without a positive/negative decision.</p>")
    out += _sanity_html(c, th, td)
    tr = raw.get("training") if isinstance(raw.get("training"), dict) else {}
    if tr:
        bits = [f"{esc(k.replace('_', ' '))}: {esc(tr[k])}" for k in
                ("script", "device", "epochs", "best_epoch", "train_seconds", "seed") if k in tr]
        out += ["<h3>Training</h3>", f"<p>{' · '.join(bits)}</p>"]
    out += ["<h3>Licence</h3>", f"<p>{esc(c.license)}</p>", "<h3>Weights</h3>", "<table cellspacing=0>"]
    results = {v.file: v for v in (getattr(entry, "verify", None) or [])}
    for w in c.weights:
        v = results.get(w.file)
        digest = w.sha256 or w.md5 or "—"
        if v is None:
            state = f"<span style='color:{MUTED}'>not checked yet</span>"
        elif v.ok:
            state = f"<span style='color:#7bd88f'>✓ {esc(v.algorithm)} verified</span>"
        else:
            state = f"<span style='color:{ERROR_FG}'>✗ {esc(v.message)}</span>"
        out.append(f"<tr><td {td}>{esc(w.file)}</td><td {td}><code>{esc(digest[:16])}…</code></td>"
                   f"<td {td}>{state}</td></tr>")
    out.append("</table>")
    if c.folder is not None:
        src = f" ({esc(entry.source)})" if entry is not None and getattr(entry, "source", None) else ""
        out.append(f"<p style='color:{MUTED}'>Folder: {esc(c.folder)}{src}</p>")
    out.append("</div>")
    return "".join(out)


def _sanity_html(card, th: str, td: str) -> list[str]:
    """The weight-randomisation check of each explanation method (sanity.json), if measured."""
    from imaging_assist.explain.sanity import other_weights_reason, recorded_sanity, sanity_methods

    rec = recorded_sanity(card)
    if not rec:
        # a check made with other weights (a retrained or fine-tuned model): said, not left out
        why = other_weights_reason(card)
        stale = [m.replace("_", " ") for m in sanity_methods(card)]
        if not why or not stale:
            return []
        return ["<h3>Explanation sanity check</h3>",
                f"<p style='color:{ERROR_FG}'>{esc(', '.join(stale))}: not checked for these weights: "
                f"{esc(why)}</p>"]
    out = ["<h3>Explanation sanity check</h3>",
           f"<p style='color:{MUTED}'>Weights randomised layer by layer (Adebayo et al. 2018): a "
           "method passes when its map of the randomised network correlates &lt; 0.5 (Spearman) "
           "with the trained one's.</p><table cellspacing=0><tr>"
           + "".join(f"<th {th}>{h}</th>" for h in ("Method", "Result", "Worst Spearman")) + "</tr>"]
    for m, r in rec.items():
        ok = bool(r.get("passed"))
        res = (f"<span style='color:#7bd88f'>passed</span>" if ok else
               f"<span style='color:{ERROR_FG}'>failed — the map may show image structure</span>")
        out.append(f"<tr><td {td}>{esc(m.replace('_', ' '))}</td><td {td}>{res}</td>"
                   f"<td {td}>{_num(r.get('final_spearman'), 2)}</td></tr>")
    out.append("</table>")
    return out


class ModelCardDialog(QDialog):
    def __init__(self, card, entry=None, parent=None):
        super().__init__(parent)
        self.setWindowTitle(f"Model card — {card.name}")
        self.resize(760, 720)
        lay = QVBoxLayout(self)
        self.text = QTextBrowser()
        self.text.setOpenExternalLinks(False)
        self.text.setHtml(card_html(card, entry))
        lay.addWidget(self.text, 1)
        bb = QDialogButtonBox(QDialogButtonBox.Close)
        bb.rejected.connect(self.reject)
        bb.accepted.connect(self.accept)
        lay.addWidget(bb)
        self.setAttribute(Qt.WA_DeleteOnClose, False)

    def plain_text(self) -> str:
        return self.text.toPlainText()
