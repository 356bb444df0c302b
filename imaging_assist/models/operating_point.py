"""What a decision at the card's operating threshold is worth, quoted wherever a decision is
shown (CLI summary, viewer panel, results.json ``decision``).

Rules (issue 14):

* The figures are the card's **independent test** sensitivity and specificity at that
  threshold, with their 95% CIs -- never the validation split's (the threshold was chosen
  there, so its figures are optimistic).  A card metric counts as test data when its ``data``
  text does not mention "validation" and names the threshold value.  Where a card has more
  than one test set at the threshold (``cxr-pneumonia``: a patient split of the original
  training data and the original Kermany test split's persons never trained on), the one with the
  lowest specificity + sensitivity is quoted (the least favourable; for cxr-pneumonia the
  original test split, specificity 0.76, not the patient split's 1.0).
* PPV / NPV at a stated prevalence: by default the prevalence of that test set (from the
  card's ``data.splits``), said so in the text ("prevalence 63% of the original Kermany test
  split, not your population"; the split is the one in ``data.splits`` whose size is the
  metric's ``n``); a caller may give another one.  Their intervals are computed
  from the sensitivity / specificity CI bounds (PPV and NPV rise with both), an approximation
  that is stated.
* The most likely class comes first.  A label above its threshold that is NOT the most likely
  class (a low rule-out threshold: ``us-breast`` malignant) reads "above rule-out threshold:
  review", never "positive" under a more probable class.
* A decision is withheld (probabilities stay) when the run was a research override of the
  card's fit rules, or when the result is flagged out of distribution (``ood.flagged``).

No Qt, no torch.
"""

from __future__ import annotations

import math
import re

__all__ = ["operating_point", "ppv_npv", "decide_item", "decision_text", "apply_decision",
           "format_probability"]


def format_probability(p: float, threshold: float | None = None) -> str:
    """A probability with 3 decimals, or as many more as it takes to read on the same side of
    the printed threshold (``:g``, as every decision line prints it) as it lies of the
    threshold: 0.17224 over 0.1722 is never printed "0.172", 0.61996 under 0.62 never "0.620".
    The one rule for the CLI, the report, DICOM SR text and the viewer's panels."""
    p = float(p)
    if not math.isfinite(p):
        return "not a number"
    s = f"{p:.3f}"
    if threshold is None or not math.isfinite(float(threshold)):
        return s
    shown, above = float(f"{float(threshold):g}"), p >= float(threshold)
    for d in range(3, 17):
        s = f"{p:.{d}f}"
        if (float(s) >= shown) == above:
            break
    return s


def ppv_npv(sensitivity: float, specificity: float, prevalence: float) -> tuple[float | None, float | None]:
    """Positive / negative predictive value by Bayes' rule; None where undefined (0/0)."""
    se, sp, p = float(sensitivity), float(specificity), float(prevalence)
    tp, fp = se * p, (1 - sp) * (1 - p)
    tn, fn = sp * (1 - p), (1 - se) * p
    ppv = tp / (tp + fp) if tp + fp > 0 else None
    npv = tn / (tn + fn) if tn + fn > 0 else None
    return ppv, npv


def _num(v) -> str:
    return re.escape(f"{float(v):.4f}".rstrip("0").rstrip("."))


def _test_metrics(card, label: str, threshold: float) -> list[dict]:
    """[(data, {"sensitivity": m, "specificity": m})] of independent test sets at the threshold."""
    sets: dict[str, dict] = {}
    thr = re.compile(r"threshold\s*" + _num(threshold) + r"(?!\d)")
    for m in card.metrics or []:
        if not isinstance(m, dict) or m.get("name") not in ("sensitivity", "specificity"):
            continue
        if m.get("label") not in (label, None):
            continue
        data = str(m.get("data", ""))
        if "validation" in data.lower() or not thr.search(data):
            continue
        key = thr.split(data)[0].rstrip(" ,;")
        sets.setdefault(key, {})[m["name"]] = m
    return [{"data": k, **v} for k, v in sets.items() if "sensitivity" in v and "specificity" in v]


def _split_prevalence(card, label: str, data: str, n_metric) -> tuple[float, str] | None:
    """(prevalence, where from) of the test set of a metric in the card's ``data.splits``: the
    test split whose size is the metric's ``n`` (only when exactly one is)."""
    splits = ((card.raw or {}).get("data") or {}).get("splits") or {}
    cands = [k for k, s in splits.items() if "test" in k and isinstance(s, dict)
             and (s.get("images") or s.get("tiles")) == n_metric]
    if len(cands) != 1:
        return None
    key = cands[0]
    s = splits[key]
    n = s.get("images") or s.get("tiles")
    if not isinstance(s.get(label), int) or not isinstance(n, int) or n <= 0:
        return None
    return s[label] / n, f"{s[label]} of {n} images with {label} in the card's {key.replace('_', ' ')} split"


def operating_point(card, label: str, prevalence: float | None = None,
                    prevalence_source: str = "") -> dict | None:
    """The figures to quote beside a decision on ``label``: test-set sensitivity/specificity
    with CIs, PPV/NPV at a stated prevalence.  None when the card has no threshold for
    ``label``; ``{"threshold": t, "test": None, "note": ...}`` when it has no test figures."""
    t = _effective_thresholds(card).get(label)
    if t is None:
        return None
    out: dict = {"label": label, "threshold": float(t.threshold), "threshold_chosen_on": t.data,
                 "threshold_source": "card"}
    if getattr(t, "n_studies", 0):  # a site threshold (models.site) replaces the card's
        out.update(threshold_source="site", note=getattr(t, "note", ""), test=None, predictive_values=None,
                   site={"sensitivity": t.sensitivity, "specificity": t.specificity,
                         "n_studies": t.n_studies, "date": getattr(t, "date", "")})
        return out
    sets = _test_metrics(card, label, t.threshold)
    if not sets:
        out.update(test=None, note="the card gives no independent test figures at this threshold; "
                                   "the validation figures are not quoted (the threshold was chosen there)")
        return out
    best = min(sets, key=lambda s: s["sensitivity"]["value"] + s["specificity"]["value"])
    se, sp = best["sensitivity"], best["specificity"]
    out["test"] = {"data": best["data"], "n": se.get("n"),
                   "sensitivity": {"value": se["value"], "ci95": se.get("ci95")},
                   "specificity": {"value": sp["value"], "ci95": sp.get("ci95")}}
    if len(sets) > 1:
        out["test"]["note"] = (f"least favourable of {len(sets)} test sets in the card "
                               f"({'; '.join(s['data'] for s in sets)})")
    if prevalence is None:
        pv = _split_prevalence(card, label, best["data"], se.get("n"))
        if pv is not None:
            prevalence, prevalence_source = pv[0], f"{pv[1]} (the test data, not your population)"
    if prevalence is not None and 0 <= prevalence <= 1:
        ppv, npv = ppv_npv(se["value"], sp["value"], prevalence)
        pv_out = {"prevalence": round(float(prevalence), 4), "prevalence_source": prevalence_source or "given",
                  "ppv": _r(ppv), "npv": _r(npv)}
        lo_se, hi_se = (se.get("ci95") or [None, None])
        lo_sp, hi_sp = (sp.get("ci95") or [None, None])
        if None not in (lo_se, hi_se, lo_sp, hi_sp):
            p_lo, n_lo = ppv_npv(lo_se, lo_sp, prevalence)
            p_hi, n_hi = ppv_npv(hi_se, hi_sp, prevalence)
            pv_out["ppv_ci95"] = [_r(p_lo), _r(p_hi)]
            pv_out["npv_ci95"] = [_r(n_lo), _r(n_hi)]
            pv_out["ci_method"] = "from the sensitivity/specificity CI bounds (approximate)"
        out["predictive_values"] = pv_out
    else:
        out["predictive_values"] = None
    return out


def _effective_thresholds(card) -> dict:
    """The card's thresholds with this site's saved ones in their place (models.site)."""
    try:
        from .site import effective_thresholds

        return effective_thresholds(card)[0]
    except Exception:  # noqa: BLE001 - an unreadable site file: models.site reports it; use the card's
        return dict(card.thresholds or {})


def _r(v):
    return None if v is None else round(float(v), 4)


def _ci(m: dict) -> str:
    ci = m.get("ci95")
    return f"{m['value']:.2f} ({ci[0]:.2f}-{ci[1]:.2f})" if ci else f"{m['value']:.2f}"


def operating_point_text(op: dict | None) -> str:
    """One line: "test: sens 0.98 (0.96-0.99), spec 0.76 (0.71-0.82), PPV 0.87 / NPV 0.96 at
    prevalence 63% (...)"."""
    if not op:
        return ""
    if op.get("threshold_source") == "site":
        st = op.get("site") or {}
        bits = [op.get("note") or "site threshold"]
        if st.get("sensitivity") is not None and st.get("specificity") is not None:
            bits.append(f"sensitivity {st['sensitivity']:.2f}, specificity {st['specificity']:.2f} on the "
                        f"{st.get('n_studies')} local studies where it was chosen")
        return "; ".join(bits)
    if not op.get("test"):
        return op.get("note", "")
    t = op["test"]
    s = (f"{t['data']}: sensitivity {_ci(t['sensitivity'])}, specificity {_ci(t['specificity'])}")
    pv = op.get("predictive_values")
    if pv and pv.get("ppv") is not None and pv.get("npv") is not None:
        s += (f"; PPV {pv['ppv']:.2f}, NPV {pv['npv']:.2f} at prevalence {pv['prevalence']:.0%} "
              f"({pv['prevalence_source']})")
    return s


def label_state(decision: dict | None, label: str) -> dict | None:
    """The ``labels[]`` entry of a :func:`decide_item` decision for ``label`` (its ``state``:
    positive / review / negative / withheld, and the unrounded ``probability``), or None. What
    every output says (CLI line, PDF, SR): never recomputed from a rounded probability."""
    for x in (decision or {}).get("labels") or []:
        if isinstance(x, dict) and x.get("label") == label:
            return x
    return None


def decide_item(card, probabilities: dict[str, float], withheld: str = "",
                prevalence: float | None = None, prevalence_source: str = "") -> dict:
    """The ``decision`` of a results.json item: most likely class first, each thresholded
    label with its state (positive / review / negative / withheld) and operating point."""
    ranked = sorted(probabilities.items(), key=lambda kv: -kv[1])
    top = ranked[0][0] if ranked else None
    labels = []
    for lab, p in ranked:
        op = operating_point(card, lab, prevalence, prevalence_source)
        if op is None:
            continue
        t = op["threshold"]
        if withheld:
            state = "withheld"
        elif p >= t:
            state = "positive" if lab == top else "review"
        else:
            state = "negative"
        labels.append({"label": lab, "probability": float(p), "threshold": t, "state": state,
                       "operating_point": op})
    d = {"most_likely": top, "ranking": [lab for lab, _ in ranked], "labels": labels,
         "withheld": bool(withheld), "withheld_reason": withheld or None}
    d["text"] = decision_text(d)
    return d


def decision_text(d: dict) -> str:
    """The decision in words, most likely class first."""
    parts = []
    for x in d.get("labels") or []:
        lab, t = x["label"], x["threshold"]
        p = format_probability(x["probability"], None if x["state"] == "withheld" else t)
        if x["state"] == "withheld":
            parts.append(f"{lab} {p}: decision withheld ({d.get('withheld_reason')})")
        elif x["state"] == "positive":
            parts.append(f"{lab} {p} >= threshold {t:g}: positive")
        elif x["state"] == "review":
            parts.append(f"{lab} {p} above rule-out threshold {t:g}: review "
                         f"(most likely: {d['most_likely']})")
        else:
            parts.append(f"{lab} {p} < threshold {t:g}: negative")
        line = operating_point_text(x["operating_point"])
        if line and x["state"] != "withheld":
            parts[-1] += f" [{line}]"
        x["text"] = parts[-1]
    return "; ".join(parts)


def apply_decision(d: dict, card, withheld: str = "") -> dict | None:
    """Add ``decision`` to a classification item of results.json; when withheld, the item's
    threshold ``decisions`` lose their ``positive`` (None) so that nothing acts on them."""
    probs = d.get("probabilities")
    if not probs or not isinstance(probs, dict):
        return None
    ood = d.get("ood") if isinstance(d.get("ood"), dict) else None
    if not withheld and ood and ood.get("flagged"):
        withheld = "outside what this model was trained on"
    dec = decide_item(card, probs, withheld)
    d["decision"] = dec
    ops = {x["label"]: x for x in dec["labels"]}
    for lab, v in (d.get("decisions") or {}).items():
        if not isinstance(v, dict) or lab not in ops:
            continue
        # the figures beside a decision are the independent test split's, not validation's
        test = ops[lab]["operating_point"].get("test")
        v["sensitivity"] = test["sensitivity"]["value"] if test else None
        v["specificity"] = test["specificity"]["value"] if test else None
        v["sensitivity_ci95"] = test["sensitivity"].get("ci95") if test else None
        v["specificity_ci95"] = test["specificity"].get("ci95") if test else None
        v["figures_from"] = test["data"] if test else ops[lab]["operating_point"].get("note")
        if ops[lab]["operating_point"].get("threshold_source") == "site":  # the site's own figures
            st = ops[lab]["operating_point"]["site"]
            v["sensitivity"], v["specificity"] = st["sensitivity"], st["specificity"]
        v["state"] = ops[lab]["state"]
        if withheld:
            v["positive"] = None
            v["withheld"] = withheld
    return dec
