"""Drift monitor: the logged runs of a model, per window, against its training reference.

Per window (``N`` consecutive runs, or ``D`` days):

* input drift: the OOD score and the intensity summary (KS test + PSI against the
  reference distributions of :mod:`.reference`), the OOD-flag rate (exact binomial test
  against the rate the reference gives at the card's current threshold), metadata
  (manufacturer, modality: PSI over categories);
* output drift: the score distribution (KS + PSI) and the positive rate (binomial test);
* readers: agreement (agree / (agree + disagree), Wilson 95% interval; the latest verdict per
  input, so a film analysed again counts once) and, on the reader-confirmed cases, AUC with a
  cluster-bootstrap 95% interval by patient (:func:`imaging_assist.evaluation.bootstrap_ci`;
  none for an AUC of 0 or 1, where it collapses to a point) and sensitivity/specificity at the
  card's threshold (:func:`imaging_assist.evaluation.sens_spec_ci`).

Only the runs of the card's version are compared (same ``model_version`` and, where logged, weights
hash): another version's runs had other weights, OOD statistics and thresholds, so they are counted
in the report (``other_versions``, a note), not compared with this version's reference.  A value no
run can log (a hand edit, a flipped byte: ``positive`` 112, a text time, a NaN probability) is one
:class:`~.log.LogError` line naming the run.

An alert is raised when a statistic crosses the thresholds stated in the reference file
(or the site's ``config_dir()/monitor.json``); windows with fewer than ``min_n`` runs are
shown, never alerted on.  :func:`monitor` returns the JSON the CLI prints and the GUI plots.

Statistics come from scipy (``ks_2samp``, ``binomtest``); PSI is three lines of numpy
(no maintained package computes it without pulling a framework in).
"""

from __future__ import annotations

import datetime as _dt
import json
import re

import numpy as np

from ..errors import UserError
from .log import LogError
from .reference import INPUT_STATS, OUTPUT_STATS, load_reference, thresholds

EPS = 1e-4  # PSI floor for empty bins (the usual convention)
_COLS = ("id", "time_unix", "model_version", "ood_score", "ood_flagged", "int_mean",
         "int_std", "int_p50", "score", "positive", "manufacturer", "modality")


# --------------------------------------------------------------------------- statistics
def psi(ref: np.ndarray, cur: np.ndarray, bins: int = 10) -> float:
    """Population stability index with the reference's quantile bins (open-ended outer bins)."""
    ref = np.asarray(ref, float)
    cur = np.asarray(cur, float)
    if ref.size == 0 or cur.size == 0:
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1) / ref.size
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1) / cur.size
    r, c = np.maximum(r, EPS), np.maximum(c, EPS)
    return float(np.sum((c - r) * np.log(c / r)))


def psi_categories(ref: dict[str, int], cur: dict[str, int]) -> float:
    keys = sorted(set(ref) | set(cur))
    nr, nc = sum(ref.values()) or 1, sum(cur.values()) or 1
    r = np.maximum(np.array([ref.get(k, 0) / nr for k in keys]), EPS)
    c = np.maximum(np.array([cur.get(k, 0) / nc for k in keys]), EPS)
    return float(np.sum((c - r) * np.log(c / r)))


def _r(v, d=4):
    return None if v is None or not np.isfinite(v) else round(float(v), d)


# --------------------------------------------------------------------------- windows
def parse_window(text: str | None) -> tuple[str, float]:
    """``"7d"``/``"7days"`` -> ("days", 7); ``"100"`` -> ("runs", 100); None -> 7 days."""
    if text is None:
        return "days", 7.0
    t = str(text).strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(d|day|days)", t)
    if m:
        v = float(m.group(1))
        if v <= 0:
            raise UserError("--window: the number of days must be positive")
        return "days", v
    if t.isdigit() and int(t) >= 1:
        return "runs", float(int(t))
    raise UserError(f"--window {text!r}: give days as e.g. 7d, or a number of runs as e.g. 200")


def parse_since(text: str | None) -> float | None:
    if not text:
        return None
    try:
        d = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--since {text!r}: give a date as YYYY-MM-DD (or an ISO date-time)") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.timezone.utc)
    return d.timestamp()


_TEXT_COLS = ("model_version", "manufacturer", "modality")
_NULL = 1e308  # NULL of a numeric column, read as this and turned into NaN in numpy (no Python loop)


SLIDE_KINDS = ("slide", "slide_region")  # whole-slide runs (monitoring/slide_log.py)


def version_filter(card, alias: str = "") -> tuple[str, list]:
    """SQL condition (and its parameters) for the runs of ``card``'s version: the same
    ``model_version`` and, where the run logged one, the same weights hash (as ``log.row_from_result``
    writes it).  Each version is compared with its own reference and thresholds only."""
    w = (getattr(card, "weights", None) or [None])[0]
    sha = getattr(w, "sha256", None) or getattr(w, "md5", None)
    a = f"{alias}." if alias else ""
    if not sha:
        return f"{a}model_version IS ?", [card.version]
    return f"{a}model_version IS ? AND ({a}weights_sha256 IS NULL OR {a}weights_sha256 = ?)", [card.version, sha]


def _damaged(lg, what: str) -> LogError:
    """The one line ``log.PredictionLog._reading`` gives for damage, naming the row and value."""
    return LogError(f"prediction log {getattr(lg, 'path', '')} is damaged ({what}); keep a copy of it "
                    f"and move it aside to start a new one")


def _show(v) -> str:
    return repr(v)[:40]


def _numbers(lg, name: str, col, ids) -> np.ndarray:
    """A numeric column as floats (NULL -> NaN); a text or blob (hand edit, flipped byte) is damage."""
    try:
        a = np.array(col, dtype=float)
    except (TypeError, ValueError):
        for i, v in zip(ids, col):
            try:
                float(v)
            except (TypeError, ValueError):
                raise _damaged(lg, f"run {i}: {name} {_show(v)}") from None
        raise
    a[a >= _NULL] = np.nan  # NULL (see load_runs); +inf too, as before
    return a


def _check_runs(lg, out: dict) -> None:
    """Values no run can log (a hand edit, a flipped byte in a stored number): one LogError line
    naming the run, instead of a binomial test with k > n or windows cut at NaN."""
    bad = [("time_unix", ~np.isfinite(out["time_unix"]))]
    for k in ("positive", "ood_flagged"):  # 0/1 decisions (NULL: withheld / no OOD score)
        v = out[k]
        bad.append((k, ~np.isnan(v) & (v != 0) & (v != 1)))
    for k in _TEXT_COLS:
        bad.append((k, np.array([not isinstance(v, str) for v in out[k]], dtype=bool)))
    for k, mask in bad:
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            v = out[k][i]
            shown = _show(v) if k in _TEXT_COLS else ("missing or infinite" if np.isnan(v) else f"{v:g}")
            raise _damaged(lg, f"run {int(out['id'][i])}: {k} {shown}")


def load_runs(lg, model_id: str, since: float | None = None, slides: bool | None = None,
              card=None) -> dict[str, np.ndarray]:
    """The model's logged runs (``slides``: None all, False per-image runs only, True whole-slide
    runs only; ``card``: only the runs of that card's version, :func:`version_filter`).  Values
    no run can log are a one-line :class:`LogError` (``_check_runs``)."""
    sel = ", ".join(c if c in _TEXT_COLS else f"COALESCE({c}, {_NULL})" for c in _COLS)
    sql = f"SELECT {sel} FROM runs WHERE model_id = ?"
    p: list = [model_id]
    if card is not None:
        cond, cp = version_filter(card)
        sql += f" AND {cond}"
        p += cp
    if slides is not None:
        sql += f" AND COALESCE(kind, '') {'IN' if slides else 'NOT IN'} ({', '.join('?' * len(SLIDE_KINDS))})"
        p += list(SLIDE_KINDS)
    if since is not None:
        sql += " AND time_unix >= ?"
        p.append(since)
    rows = lg.query(sql + " ORDER BY time_unix, id", p)
    cols = list(zip(*rows)) if rows else [()] * len(_COLS)
    out = {}
    for name, col in zip(_COLS, cols):
        if name in _TEXT_COLS:
            # NULL -> "(none)"; a blob (damage) stays as it is and is refused by _check_runs
            out[name] = np.array(["(none)" if v is None else v for v in col], dtype=object)
        else:
            out[name] = _numbers(lg, name, col, cols[0])
    _check_runs(lg, out)
    return out


def _probabilities_problem(text) -> str | None:
    """Why a run's stored probabilities are damaged (not a JSON object of finite numbers in
    [0, 1]), or None.  NULL is no problem: a segmenter has none."""
    if text is None:
        return None
    try:
        probs = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return f"probabilities {_show(text)}"
    if not isinstance(probs, dict):
        return f"probabilities {_show(text)}"
    for k, v in probs.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not -1e-6 <= v <= 1 + 1e-6:  # NaN fails too
            return f"probability of {_show(k)} {_show(v)}"
    return None


def load_feedback(lg, model_id: str, since: float | None = None, card=None) -> dict[str, np.ndarray]:
    """The latest verdict per (run, finding) of this model's runs (``card``: of that version only).
    A run whose probabilities or decisions cannot be read is a one-line :class:`LogError` (it would
    otherwise count as a negative call, or not at all, in the reader-confirmed performance)."""
    # latest verdict per (run, finding) first, then its run by primary key (CROSS JOIN keeps
    # SQLite from scanning every run of the model: 60 s -> 10 ms on 100k runs)
    sql = ("WITH latest AS (SELECT MAX(id) AS id FROM feedback GROUP BY run_id, finding) "
           "SELECT f.run_id, f.finding, f.verdict, f.correct_label, r.time_unix, r.score, r.patient_key, "
           "r.probabilities, r.decisions, r.top_label, f.id, r.input_key FROM latest CROSS JOIN feedback f "
           "ON f.id = latest.id CROSS JOIN runs r ON r.id = f.run_id WHERE r.model_id = ?")
    p: list = [model_id]
    if card is not None:
        cond, cp = version_filter(card, "r")
        sql += f" AND {cond}"
        p += cp
    if since is not None:
        sql += " AND r.time_unix >= ?"
        p.append(since)
    rows = lg.query(sql, p)
    run_ids = [r[0] for r in rows]
    for r in rows:
        why = _probabilities_problem(r[7])
        if why is None and r[8] is not None:
            try:
                decs = json.loads(r[8])
            except (TypeError, ValueError, RecursionError):
                decs = None
            if decs and not isinstance(decs, dict):  # feedback.finding_present reads it as a dict
                why = f"decisions {_show(r[8])}"
        if why:
            raise _damaged(lg, f"run {r[0]}: {why}")
    t = _numbers(lg, "time_unix", [r[4] for r in rows], run_ids)
    if not np.all(np.isfinite(t)):
        raise _damaged(lg, f"run {run_ids[int(np.flatnonzero(~np.isfinite(t))[0])]}: time_unix not a number")
    return {"run_id": np.array(run_ids, dtype=float),
            "finding": np.array([r[1] for r in rows], dtype=object),
            "verdict": np.array([r[2] for r in rows], dtype=object),
            "correct_label": np.array([r[3] for r in rows], dtype=object),
            "time_unix": t,
            "probabilities": [r[7] for r in rows],
            "decisions": [r[8] for r in rows],
            "top_label": [r[9] for r in rows],
            "feedback_id": np.array([r[10] for r in rows], dtype=float),
            # the film: a repeated analysis of it is not a new reader judgement (its pseudonym, else the run)
            "input_key": np.array([r[11] if isinstance(r[11], str) and r[11] else f"run{r[0]}" for r in rows],
                                  dtype=object),
            "patient_key": np.array([r[6] or f"run{r[0]}" for r in rows], dtype=object)}


def _windows(t: np.ndarray, kind: str, size: float) -> list[tuple[int, int]]:
    """(start, end) index ranges of consecutive windows over time-sorted runs."""
    n = len(t)
    if n == 0:
        return []
    if kind == "runs":
        k = int(size)
        return [(a, min(n, a + k)) for a in range(0, n, k)]
    span = size * 86400.0
    w = np.floor((t - t[0]) / span).astype(np.int64)
    cuts = np.flatnonzero(np.diff(w)) + 1
    starts = np.r_[0, cuts]
    ends = np.r_[cuts, n]
    return list(zip(starts.tolist(), ends.tolist()))


# --------------------------------------------------------------------------- one window
def _dist(name, ref_vals, cur, th, kind):
    from scipy.stats import ks_2samp

    cur = cur[np.isfinite(cur)]
    d = {"n": int(cur.size), "median": _r(np.median(cur)) if cur.size else None}
    if ref_vals is None or len(ref_vals) == 0 or cur.size == 0:
        d.update({"ks_p": None, "psi": None, "alert": False, "note": "no reference" if cur.size else "no values"})
        return d
    ref = np.asarray(ref_vals, float)
    # exact p-values up to 1,000 runs per window; beyond, the asymptotic distribution (exact
    # costs ~12 ms per test there and differs in the digits that do not decide an alert)
    ks = ks_2samp(ref, cur, method="auto" if cur.size <= 1000 else "asymp")
    d["ks_stat"], d["ks_p"] = _r(ks.statistic), float(f"{ks.pvalue:.3g}")
    d["psi"] = _r(psi(ref, cur, int(th["psi_bins"])))
    d["reference_median"] = _r(np.median(ref))
    d["alert"] = bool(cur.size >= th["min_n"] and ks.pvalue < th["ks_p"] and d["psi"] is not None
                      and d["psi"] >= th["psi"])
    if d["alert"]:
        d["text"] = (f"{kind} drift in {name}: median {d['median']} vs reference {d['reference_median']} "
                     f"(KS p={d['ks_p']:.2g} < {th['ks_p']}, PSI {d['psi']:.2f} >= {th['psi']})")
    return d


def _rate(name, ref_rate, vals, th, kind):
    from scipy.stats import binomtest

    v = vals[np.isfinite(vals)]
    n, k = int(v.size), int(np.sum(v))
    d = {"n": n, "rate": _r(k / n) if n else None, "reference_rate": _r(ref_rate)}
    if n:
        lo, hi = _wilson(k, n)
        d["ci95"] = [_r(lo), _r(hi)]
    if not n or ref_rate is None:
        d.update({"p": None, "alert": False})
        return d
    p = binomtest(k, n, min(max(ref_rate, 1e-9), 1 - 1e-9)).pvalue
    d["p"] = float(f"{p:.3g}")
    d["alert"] = bool(n >= th["min_n"] and p < th["rate_p"] and abs(k / n - ref_rate) >= th["rate_diff"])
    if d["alert"]:
        d["text"] = (f"{kind} drift in {name}: {k}/{n} = {k / n:.1%} vs reference {ref_rate:.1%} "
                     f"(binomial p={p:.2g} < {th['rate_p']}, difference >= {th['rate_diff']:.0%})")
    return d


def _wilson(k, n):
    from ..evaluation import wilson_ci

    return wilson_ci(k, n)


def _categories(name, ref_counts, cur_vals, th):
    cur: dict[str, int] = {}
    for v in cur_vals:
        cur[v] = cur.get(v, 0) + 1
    d = {"n": int(len(cur_vals)), "counts": cur}
    if not ref_counts or not cur:
        d.update({"psi": None, "alert": False})
        return d
    if set(ref_counts) == {"(none)"}:
        # the training images carried no such metadata (plain JPEG/PNG): every DICOM would
        # differ, so an alert would only ever say that; noted instead of alerting for ever
        d.update({"psi": None, "alert": False,
                  "note": f"the training reference has no {name} (plain images): not compared"})
        return d
    d["psi"] = _r(psi_categories(ref_counts, cur))
    new = sorted(set(cur) - set(ref_counts))
    if new:
        d["not_in_reference"] = new
    d["alert"] = bool(len(cur_vals) >= th["min_n"] and d["psi"] >= th["psi"])
    if d["alert"]:
        d["text"] = (f"input drift in {name}: {', '.join(f'{k} {v}' for k, v in sorted(cur.items()))} vs "
                     f"reference {', '.join(f'{k} {v}' for k, v in sorted(ref_counts.items()))} "
                     f"(PSI {d['psi']:.2f} >= {th['psi']})")
    return d


N_BOOT = 1000  # resamples of the reader-confirmed AUC interval per window


def fast_auc(y, s) -> float:
    """Mann-Whitney AUC with average ranks for ties, in numpy (the bootstrap calls it 1,000
    times per window; equal to evaluation.roc_auc, checked in tests/test_monitor_drift.py)."""
    y = np.asarray(y).astype(bool)
    npos = int(y.sum())
    nneg = y.size - npos
    if npos == 0 or nneg == 0:
        return float("nan")
    u, inv, cnt = np.unique(np.asarray(s, float), return_inverse=True, return_counts=True)
    avg = np.cumsum(cnt) - (cnt - 1) / 2.0  # average 1-based rank of each distinct value
    r = avg[inv]
    return float((r[y].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


def _readers(fb, card, ref, th, ref_auc):
    """Agreement and reader-confirmed performance of one window's feedback."""
    from ..evaluation import bootstrap_ci, roc_auc, sens_spec_ci

    n_feedback = int(len(fb["verdict"]))
    # A film analysed again (a reader reopening the study) is one judgement, not two independent
    # ones: the latest verdict per (input, finding) counts, so n and min_n are distinct inputs.
    if n_feedback:
        order = np.argsort(-fb["feedback_id"], kind="stable")
        seen: set = set()
        keep = np.zeros(n_feedback, dtype=bool)
        for i in order.tolist():
            key = (fb["input_key"][i], fb["finding"][i])
            if key not in seen:
                seen.add(key)
                keep[i] = True
        fb = {k: (np.asarray(x, dtype=object)[keep] if isinstance(x, list) else x[keep]) for k, x in fb.items()}
    v = fb["verdict"]
    agree, disagree = int(np.sum(v == "agree")), int(np.sum(v == "disagree"))
    n = agree + disagree
    d = {"n_feedback": n_feedback, "n_inputs": len(set(fb["input_key"].tolist())), "agree": agree, "disagree": disagree,
         "unsure": int(np.sum(v == "unsure")), "alert": False}
    if n:
        lo, hi = _wilson(agree, n)
        d["agreement"] = {"value": _r(agree / n), "ci95": [_r(lo), _r(hi)], "n": n,
                          "method": "Wilson score interval, the latest verdict per input (a film "
                                    "analysed again counts once)"}
        if n >= th["min_n"] and hi < th["agreement_min"]:
            d["alert"] = True
            d["text"] = (f"readers disagree: agreement {agree}/{n} = {agree / n:.0%} (95% CI {lo:.0%}-{hi:.0%}) "
                         f"below {th['agreement_min']:.0%}")
    # reader-confirmed labels for the card's decision label (binary): y = correct label is it
    pos_label = next((lab for lab in card.thresholds), None)
    if pos_label is None:
        return d
    from .feedback import finding_present

    ys, ss, cl, keys = [], [], [], []
    for i in range(len(v)):
        cl_lab = fb["correct_label"][i]
        if fb["verdict"][i] == "unsure":
            continue
        try:
            probs = json.loads(fb["probabilities"][i] or "{}")
            # no class label (agreeing with a negative decision among 3+ labels): the verdict still
            # says whether the decision label is there, which is all this binary truth needs
            present = None if cl_lab or fb["finding"][i] != pos_label else finding_present(
                {"probabilities": fb["probabilities"][i], "decisions": fb["decisions"][i],
                 "top_label": fb["top_label"][i]}, pos_label, fb["verdict"][i])
        except ValueError:
            continue
        if pos_label not in probs or (not cl_lab and present is None):
            continue
        ys.append(int(cl_lab == pos_label) if cl_lab else int(present))
        ss.append(float(probs[pos_label]))
        cl.append(fb["patient_key"][i])
        keys.append(fb["input_key"][i])
    if not ys:
        return d
    y, s, cl = np.array(ys), np.array(ss), np.array(cl, dtype=object)
    n_inputs = len(set(keys))  # min_n counts films, not analyses of them
    perf: dict = {"n": int(len(y)), "n_positive": int(y.sum()), "n_patients": int(len(set(cl.tolist()))),
                  "label": pos_label}
    if 0 < y.sum() < len(y):
        auc = roc_auc(y, s)
        perf["auc"] = {"value": _r(auc), "method": f"cluster bootstrap by patient, {N_BOOT:,} resamples"}
        if auc in (0.0, 1.0):
            # every resample separates the classes as well: the bootstrap collapses to a point,
            # which would claim certainty (sens_spec_ci falls back to Wilson there; AUC has none)
            lo = hi = auc
            perf["auc"]["ci95"] = [None, None]
            perf["auc"]["method"] = (f"AUC of {auc:g}: interval not estimable (a bootstrap collapses to a "
                                     "point)")
            ci_text = "interval not estimable"
        else:
            lo, hi = bootstrap_ci(fast_auc, y, s, clusters=cl, strata=y, n_boot=N_BOOT)
            perf["auc"]["ci95"] = [_r(lo), _r(hi)]
            ci_text = f"95% CI {lo:.3f}-{hi:.3f}"
        if ref_auc is not None:
            perf["auc"]["reference"] = ref_auc
            if n_inputs >= th["min_n"] and hi < ref_auc - th["auc_margin"]:
                d["alert"] = True
                d["text"] = (f"performance on reader-confirmed cases fell: AUC {auc:.3f} "
                             f"({ci_text}) below the reference {ref_auc:.3f} "
                             f"minus {th['auc_margin']}")
    t = card.thresholds[pos_label].threshold
    from ..models.site import effective_thresholds

    with_site, _ = effective_thresholds(card)
    if pos_label in with_site:
        t = with_site[pos_label].threshold
    if 0 < y.sum() < len(y):
        (se_lo, se_hi), (sp_lo, sp_hi), how = sens_spec_ci(y, s, t, clusters=cl, n_boot=N_BOOT)
        se = float(np.mean(s[y == 1] >= t))
        sp = float(np.mean(s[y == 0] < t))
        perf["threshold"] = t
        perf["sensitivity"] = {"value": _r(se), "ci95": [_r(se_lo), _r(se_hi)]}
        perf["specificity"] = {"value": _r(sp), "ci95": [_r(sp_lo), _r(sp_hi)], "method": how}
    d["reader_confirmed"] = perf
    return d


# --------------------------------------------------------------------------- the monitor
def monitor(model_id: str | None = None, since: str | None = None, window: str | None = None,
            log=None, registry=None, record_alerts: bool = True, version: str | None = None) -> dict:
    """Windows and alerts of one model (or of every model in the log): the runs of its active
    version, or of ``version`` (with ``model_id``: a candidate, or a version rolled back)."""
    from ..models.registry import Registry
    from .log import db_path, open_log

    if log is None:
        if not db_path().exists():
            raise UserError(f"no prediction log yet at {db_path()}: nothing to monitor")
        log = open_log()
    if version is not None and not model_id:
        raise UserError("--version needs --model (the version of which model?)")
    kind, size = parse_window(window)
    t_since = parse_since(since)
    ids = [model_id] if model_id else [r[0] for r in log.query("SELECT DISTINCT model_id FROM runs ORDER BY 1")]
    reg = registry or Registry()
    out = {"window": {"kind": kind, "size": size}, "since": since, "models": [], "alerts": [],
           "not_for_clinical_use": True}
    for mid in ids:
        if version is not None:  # one model's named version ("no version X; known: ..." otherwise)
            from .finetune import version_card

            card = version_card(mid, version)
        else:
            try:
                card = reg.get(mid).card
            except Exception as e:  # noqa: BLE001 - a model no longer installed: say so, go on
                if model_id:
                    raise UserError(f"model {mid!r}: {e}") from None
                out["models"].append({"model_id": mid, "note": f"not installed ({e}): not monitored"})
                continue
        m = monitor_model(log, card, t_since, kind, size)
        out["models"].append(m)
        out["alerts"].extend(m["alerts"])
    if record_alerts and out["alerts"]:
        _record_alerts(log, out["alerts"])
    return out


def _base_reference(card) -> tuple[dict | None, str | None]:
    """A fine-tuned version without a reference of its own (candidates made before they got
    one): the nearest base version's reference (``training.base_version``, then its base...,
    ending at the shipped model) and the note that says so; (None, None) when there is none."""
    from .finetune import version_card

    seen, c = {card.version}, card
    for _ in range(20):
        base = ((c.raw.get("training") or {}) if isinstance(c.raw.get("training"), dict) else {}).get("base_version")
        if not isinstance(base, str) or base in seen:
            return None, None
        seen.add(base)
        try:
            c = version_card(card.id, base)
        except UserError:
            return None, None
        ref = load_reference(c)
        if ref is not None:
            return ref, (f"{card.id} {card.version} has no monitor reference of its own "
                         f"({card.folder}/monitor_reference.json): compared with the reference of version {base} "
                         f"({c.folder}), fitted with other weights; refit one for {card.version} with "
                         "python -m imaging_assist.monitoring.reference")
    return None, None


def expected_positive_rate(values: dict, threshold: float, ood_threshold: float | None) -> float | None:
    """The reference's positive rate at ``threshold`` as ``rates.positive`` was measured: among the
    images whose decision is not withheld (OOD score at or below the OOD threshold; a flagged
    image has no decision), the share scoring at or above it."""
    sc = np.asarray(values.get("score") or [], float)
    ood = np.asarray(values.get("ood_score") or [], float)
    if ood_threshold is not None and ood.size == sc.size:  # one value per image (none was missing)
        sc = sc[ood <= float(ood_threshold)]
    return float(np.mean(sc >= threshold)) if sc.size else None


def monitor_model(log, card, t_since, kind, size) -> dict:
    ref = load_reference(card)
    fallback_note = None
    if ref is None:
        ref, fallback_note = _base_reference(card)
    th = thresholds(ref)
    # A whole-slide run's row summarises many tiles; a reference (and every other run) describes
    # one image or tile: the two are never pooled in one window (the slide runs are counted).
    # Only this version's runs: another version's (before a promotion, after a rollback) have other
    # weights, OOD statistics and thresholds, so its own reference is the only fair comparison.
    runs = load_runs(log, card.id, t_since, slides=False, card=card)
    vcond, vp = version_filter(card)
    since_sql, since_p = (" AND time_unix >= ?", [t_since]) if t_since is not None else ("", [])
    n_slide = len(log.query(f"SELECT 1 FROM runs WHERE model_id = ? AND kind IN (?, ?) AND {vcond}" + since_sql,
                            [card.id, *SLIDE_KINDS, *vp] + since_p))
    other = {(str(r[0]) if r[0] is not None else "(no version)") + ("" if r[1] else " (other weights)"): r[2]
             for r in log.query(f"SELECT model_version, model_version IS NOT ?, COUNT(*) FROM runs "
                                f"WHERE model_id = ? AND NOT ({vcond}){since_sql} GROUP BY 1, 2 ORDER BY 1, 2",
                                [card.version, card.id, *vp] + since_p)}
    fb = load_feedback(log, card.id, t_since, card=card)
    res = {"model_id": card.id, "card_version": card.version, "n_runs": int(len(runs["id"])),
           "thresholds": th, "windows": [], "alerts": [], "other_versions": other}
    notes = []
    if other:
        notes.append(f"{sum(other.values())} runs of other versions ("
                     + ", ".join(f"{k}: {v}" for k, v in other.items())
                     + f") not compared: each version is compared with its own reference (this is {card.version})")
    if ref is None:
        notes.append(f"no training reference ({card.folder}/monitor_reference.json): input/output "
                     "distributions are not compared; fit it with python -m imaging_assist.monitoring.reference")
    else:
        if fallback_note:
            notes.append(fallback_note)
        res["reference"] = {"data": ref.get("data"), "n": ref.get("n"), "model_version": ref.get("model_version"),
                            "own": fallback_note is None}
        ood_sha = (card.ood or {}).get("sha256") if isinstance(getattr(card, "ood", None), dict) else None
        if ref.get("ood_sha256") and ood_sha and ref["ood_sha256"] != ood_sha:
            notes.append("the OOD statistics changed since the reference was fitted: OOD-score drift is "
                         "not compared (refit the reference)")
            ref = dict(ref, values={k: v for k, v in ref["values"].items() if k != "ood_score"})
    if n_slide:
        notes.append(f"{n_slide} whole-slide run(s) logged: not pooled with the per-{(ref or {}).get('unit', 'image')} "
                      "runs and not compared with the reference, whose values describe single "
                      f"{(ref or {}).get('unit', 'image')}s (see imaging-assist log export)")
    res["n_slide_runs"] = n_slide
    res["notes"] = notes
    rv = (ref or {}).get("values", {})
    # expected OOD-flag rate: the reference's scores at the card's CURRENT threshold
    ood_thr = (card.ood or {}).get("threshold") if isinstance(getattr(card, "ood", None), dict) else None
    ref_flag = (float(np.mean(np.asarray(rv["ood_score"]) > ood_thr))
                if rv.get("ood_score") and ood_thr is not None else None)
    ref_pos = ((ref or {}).get("rates") or {}).get("positive")
    # expected positive rate: the reference's scores at the threshold runs use NOW (a site
    # threshold saved by evaluate replaces the card's, which the stored rate was measured at)
    if rv.get("score") and card.thresholds:
        from ..models.site import effective_thresholds

        lab = next(iter(card.thresholds))
        used = effective_thresholds(card)[0].get(lab)
        if used is not None and float(used.threshold) != float(card.thresholds[lab].threshold):
            ref_pos = expected_positive_rate((ref or {}).get("values", {}), float(used.threshold), ood_thr)
    t = runs["time_unix"]
    for wi, (a, b) in enumerate(_windows(t, kind, size)):
        sl = slice(a, b)
        w = {"index": wi, "n": b - a,
             "start": _iso(t[a]), "end": _iso(t[b - 1]),
             "model_versions": sorted(set(runs["model_version"][sl].tolist())),
             "input": {}, "output": {}}
        for k in INPUT_STATS:
            w["input"][k] = _dist(k, rv.get(k), runs[k][sl], th, "input")
        w["input"]["ood_flag_rate"] = _rate("OOD-flag rate", ref_flag, runs["ood_flagged"][sl], th, "input")
        cats = (ref or {}).get("categories") or {}
        for k in ("manufacturer", "modality"):
            w["input"][k] = _categories(k, cats.get(k), runs[k][sl].tolist(), th)
        for k in OUTPUT_STATS:
            w["output"][k] = _dist(k, rv.get(k), runs[k][sl], th, "output")
        w["output"]["positive_rate"] = _rate("positive rate", ref_pos, runs["positive"][sl], th, "output")
        fsel = (fb["time_unix"] >= t[a]) & (fb["time_unix"] <= t[b - 1])
        w["readers"] = _readers({k: (np.asarray(v, dtype=object)[fsel] if isinstance(v, list) else v[fsel])
                                 for k, v in fb.items()}, card, ref, th, (ref or {}).get("auc"))
        w["readers"]["corrections"] = _corrections(log, card, t[a], t[b - 1])
        for group in ("input", "output"):
            for stat, d in w[group].items():
                if d.get("alert"):
                    res["alerts"].append(_alert(card, w, f"{group}.{stat}", d["text"]))
        if w["readers"].get("alert"):
            res["alerts"].append(_alert(card, w, "readers", w["readers"]["text"]))
        w["alert"] = any(al["window"] == wi for al in res["alerts"])
        res["windows"].append(w)
    return res


def _corrections(log, card, t0: float, t1: float) -> dict:
    """Segmentation corrections of the window's runs (of this version): how many, and how much
    readers changed (Dice between the model's and the corrected label map; 1 = untouched)."""
    vcond, vp = version_filter(card, "r")
    rows = log.query("SELECT c.dice_vs_prediction FROM corrections c JOIN runs r ON r.id = c.run_id "
                     f"WHERE r.model_id = ? AND {vcond} AND r.time_unix BETWEEN ? AND ?",
                     (card.id, *vp, float(t0), float(t1)))
    d = np.array([r[0] for r in rows if isinstance(r[0], (int, float))], float)
    return {"n": len(rows), "median_dice_vs_prediction": _r(np.median(d)) if d.size else None}


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(float(t), _dt.timezone.utc).isoformat(timespec="seconds")


def _alert(card, w, stat, text) -> dict:
    return {"model_id": card.id, "model_version": card.version, "window": w["index"], "start": w["start"], "end": w["end"],
            "statistic": stat, "text": f"{card.id}: {text} (window {w['start'][:10]} - {w['end'][:10]}, "
                                                 f"{w['n']} runs)"}


def _record_alerts(log, alerts: list[dict]) -> None:
    """Each alert once in the log's events and in the audit trail (when the audit room has one)."""
    # one version's alert is not another's (windows of the same dates before and after a promotion);
    # an alert recorded before alerts named their version stands for any version
    seen = {(e["detail"].get("statistic"), e["detail"].get("start"), e["model_id"], e["detail"].get("model_version"))
            for e in log.events(kind="drift_alert")}
    for al in alerts:
        key = (al["statistic"], al["start"], al["model_id"])
        if key + (al.get("model_version"),) in seen or key + (None,) in seen:
            continue
        seen.add(key + (al.get("model_version"),))
        log.add_event("drift_alert", al["model_id"], None, al)
        audit_record("drift_alert", al)


def audit_record(action: str, detail: dict) -> None:
    """``imaging_assist.privacy.audit.record`` (never raises: a failed write is its own warning)."""
    from ..privacy import audit

    audit.record(action, **{k: v for k, v in detail.items() if k != "text"}, text=detail.get("text"))


def summary_lines(rep: dict) -> list[str]:
    """Plain-text summary for the CLI."""
    lines = []
    w = rep["window"]
    for m in rep["models"]:
        if "windows" not in m:
            lines.append(f"{m['model_id']}: {m.get('note')}")
            continue
        lines.append(f"{m['model_id']} ({m['n_runs']} runs; windows of "
                     f"{int(w['size']) if w['kind'] == 'runs' else w['size']:g} {w['kind']})")
        for note in m["notes"]:
            lines.append(f"  note: {note}")
        for win in m["windows"]:
            i = win["input"]
            o = win["output"]
            parts = [f"n={win['n']}"]
            if i["ood_score"].get("median") is not None:
                parts.append(f"OOD median {i['ood_score']['median']} (PSI {i['ood_score'].get('psi')})")
            if i["ood_flag_rate"].get("rate") is not None:
                parts.append(f"flagged {i['ood_flag_rate']['rate']:.0%}")
            if o["positive_rate"].get("rate") is not None:
                parts.append(f"positive {o['positive_rate']['rate']:.0%}")
            ag = win["readers"].get("agreement")
            if ag:
                parts.append(f"agreement {ag['value']:.0%} [{ag['ci95'][0]:.0%}-{ag['ci95'][1]:.0%}]")
            rc = win["readers"].get("reader_confirmed", {}).get("auc")
            if rc and rc.get("value") is not None:
                lo, hi = rc.get("ci95") or (None, None)
                ci = f"{lo:.3f}-{hi:.3f}" if lo is not None and hi is not None else "interval not estimable"
                parts.append(f"AUC {rc['value']:.3f} [{ci}]")
            flag = "ALERT " if win["alert"] else ""
            lines.append(f"  {flag}{win['start'][:16]} - {win['end'][:16]}: " + ", ".join(parts))
    if rep["alerts"]:
        lines.append(f"{len(rep['alerts'])} alert(s):")
        lines += [f"  ! {a['text']}" for a in rep["alerts"]]
    else:
        lines.append("no alerts")
    lines.append("Not for clinical use.")
    return lines
