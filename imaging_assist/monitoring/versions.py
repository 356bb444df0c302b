"""Site versions of a model: candidates from ``finetune``, promotion with a non-inferiority
rule, rollback.  Shipped weights are never touched: a candidate is its own model folder (the
user's choice of ``--out``, normally under ``data_dir()``); the state lives in
``config_dir()/model_versions.json``::

    {"cxr-pneumonia": {"candidates": {"1.0.0+site.1": {"folder": ..., "base_version": "1.0.0"}},
                       "active": "1.0.0+site.1" | null,      # null: the shipped/installed model
                       "history": [{"time_utc", "action", "version", "reason"}]}}

The registry puts the active version's folder first among its sources
(:func:`promoted_folders`), so every caller (GUI, analyze, batch, demo) runs it; ``rollback``
returns to the previous active version (or the shipped one).  Every step is an event in the
prediction log and in the audit trail.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError
from ..jsonvalues import is_number

STATE_FILE = "model_versions.json"
DEFAULT_MARGIN = 0.05  # AUC non-inferiority margin (stated in the candidate's metrics.json and card)
# Non-inferiority margins per metric (absolute differences).  Dice 0.02: the shipped lung
# segmenter's test Dice is 0.974 with a CI 0.01 wide, so a loss of 0.02 is about twice the
# uncertainty of the shipped figure and already visible as a border shifted by ~1-2 pixels.
# A site overrides them in ``config_dir()/monitor.json`` as {"non_inferiority_margins": {"Dice": 0.03}}.
MARGINS = {"AUC": DEFAULT_MARGIN, "Dice": 0.02}


def margin_for(metric: str) -> float:
    from ..userdirs import config_dir

    m = MARGINS.get(metric, DEFAULT_MARGIN)
    site = config_dir() / "monitor.json"
    if site.is_file():
        try:
            d = json.loads(site.read_text(encoding="utf-8")) or {}
            m = (d.get("non_inferiority_margins") or {}).get(metric, m)
        except (OSError, ValueError, TypeError, AttributeError, RecursionError) as e:
            raise UserError(f"{site} cannot be read ({e})") from None
        if not is_number(m, 0, 1):
            raise UserError(f"{site}: the non-inferiority margin of {metric} must be a number from 0 to 1, "
                            f"not {str(m)[:40]!r}")
    return float(m)


def state_path() -> Path:
    from ..userdirs import config_dir

    return config_dir() / STATE_FILE


def load_state() -> dict:
    p = state_path()
    if not p.is_file():
        return {}
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise UserError(f"cannot read {p}: {e}") from None
    if not isinstance(d, dict):
        return {}
    for model_id, m in d.items():
        why = _bad_entry(m)
        if why:
            raise UserError(f"cannot read {p}: model {model_id!r}: {why} (fix or delete the file)")
    return d


def _bad_entry(m) -> str | None:
    """Why one model's entry of the state file is not one (None: it is; a missing
    candidates / history / active is added empty)."""
    if not isinstance(m, dict):
        return "not an object"
    c, a, h = m.setdefault("candidates", {}), m.setdefault("active", None), m.setdefault("history", [])
    if not isinstance(c, dict) or not all(isinstance(v, dict) and isinstance(v.get("folder"), str)
                                          and v["folder"] for v in c.values()):
        return 'candidates must map each version to {"folder": ...}'
    if a is not None and (not isinstance(a, str) or a not in c):
        return f"the active version {str(a)[:40]!r} is not a candidate"
    if not isinstance(h, list) or not all(isinstance(x, dict) for x in h):
        return "history must be a list of objects"
    return None


def save_state(d: dict) -> None:
    p = state_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, p)


def promoted_folders() -> list[Path]:
    """Folders of the active (promoted) versions, for the registry's sources.  Never raises:
    a broken state file must not stop the shipped models from loading."""
    try:
        st = load_state()
    except UserError:
        return []
    out = []
    for m in st.values():  # load_state checked the types
        a = m.get("active")
        if a and a in m["candidates"]:
            f = Path(m["candidates"][a]["folder"])
            if f.is_absolute() and f.is_dir():
                out.append(f)
    return out


def next_version(model_id: str, base_version: str) -> str:
    root = base_version.split("+")[0]
    cands = (load_state().get(model_id) or {}).get("candidates") or {}
    n = 1 + sum(1 for v in cands if v.split("+")[0] == root)
    return f"{root}+site.{n}"


def _event(action: str, model_id: str, version: str | None, detail: dict) -> None:
    from .drift import audit_record
    from .log import open_log

    try:
        open_log().add_event(action, model_id, version, detail)
    except Exception:  # noqa: BLE001 - the state file is the record; the log is best effort
        pass
    audit_record(f"model_{action}", {"model_id": model_id, "version": version, **detail})


def register_candidate(model_id: str, version: str, folder: Path, base_version: str, detail: dict) -> None:
    st = load_state()
    m = st.setdefault(model_id, {"candidates": {}, "active": None, "history": []})
    m["candidates"][version] = {"folder": str(Path(folder).resolve()), "base_version": base_version}
    m["history"].append(_hist("candidate", version, None))
    save_state(st)
    _event("finetune", model_id, version, detail)


def _hist(action, version, reason):
    from .log import now_utc

    return {"time_utc": now_utc()[0], "action": action, "version": version, "reason": reason}


def candidate_folder(model_id: str, version: str) -> Path:
    c = ((load_state().get(model_id) or {}).get("candidates") or {}).get(version)
    if not c:
        raise UserError(f"{model_id} has no candidate version {version!r} (see `imaging-assist finetune`)")
    return Path(c["folder"])


def non_inferiority(metrics: dict) -> tuple[bool, list[str]]:
    """Whether the candidate's metrics.json passes (every comparison's lower 95% bound of
    metric(candidate) - metric(base), AUC for classifiers, Dice for segmenters, above -margin)
    and the reasons when not."""
    ni = metrics.get("non_inferiority") or {}
    what = ni.get("metric", "AUC")
    margin = ni.get("margin", MARGINS.get(what, DEFAULT_MARGIN))
    if not is_number(margin, 0, 1):
        return False, [f"the margin {str(margin)[:20]!r} is not a number from 0 to 1"]
    why = []
    comps = ni.get("comparisons") or {}
    if not comps:
        why.append("no comparison with the base model was measured")
    for name, c in comps.items():
        lo = (c.get("diff_ci95") or [None])[0]
        if lo is None:
            why.append(f"{name}: no interval")
        elif not lo > -margin:  # NaN fails too
            why.append(f"{name}: {what} difference {c['diff']:+.3f} (95% CI {lo:+.3f} to {c['diff_ci95'][1]:+.3f}) "
                       f"does not exclude a loss of {margin}")
    return not why, why


def promote(model_id: str, version: str, force_reason: str | None = None) -> dict:
    folder = candidate_folder(model_id, version)
    mp = folder / "metrics.json"
    if not mp.is_file():
        raise UserError(f"{mp} is missing: the candidate was not measured")
    try:
        metrics = json.loads(mp.read_text(encoding="utf-8"))
        ok, why = non_inferiority(metrics)
    except (OSError, ValueError, RecursionError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise UserError(f"{mp} is not a candidate's metrics file ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:120]})") from None
    if not ok and not force_reason:
        _event("promote_refused", model_id, version, {"reasons": why})
        ni = metrics.get("non_inferiority") or {}
        msg = (f"{model_id} {version} not promoted (non-inferiority on {ni.get('metric', 'AUC')}, margin "
               f"{ni.get('margin', DEFAULT_MARGIN)}): " + "; ".join(why) + " (use --force REASON to override)")
        raise UserError(" ".join(msg.split()))  # values from metrics.json: one line
    st = load_state()
    m = st[model_id]
    prev = m.get("active")
    m["active"] = version
    m["history"].append(_hist("promote", version, force_reason or "non-inferior"))
    m["history"][-1]["previous"] = prev
    save_state(st)
    _event("promote", model_id, version, {"previous": prev, "forced": bool(force_reason and not ok),
                                          "reason": force_reason, "failed_checks": why})
    return {"model_id": model_id, "active": version, "previous": prev, "forced": bool(force_reason and not ok),
            "reasons": why}


def rollback(model_id: str) -> dict:
    st = load_state()
    m = st.get(model_id)
    if not m or not m.get("active"):
        raise UserError(f"{model_id}: no promoted version to roll back (the shipped model is active)")
    cur = m["active"]
    prev = None
    for h in reversed(m["history"]):
        if h.get("action") == "promote" and h.get("version") == cur:
            prev = h.get("previous")
            break
    if not isinstance(prev, str) or prev not in (m.get("candidates") or {}):
        prev = None
    m["active"] = prev
    m["history"].append(_hist("rollback", prev, f"from {cur}"))
    save_state(st)
    _event("rollback", model_id, prev, {"from": cur})
    return {"model_id": model_id, "active": prev, "from": cur}


def status(model_id: str) -> dict:
    return load_state().get(model_id) or {"candidates": {}, "active": None, "history": []}
