"""Site versions of a model: candidates from ``finetune``, promotion with a non-inferiority
rule, rollback.  Shipped weights are never touched: a candidate is its own model folder (the
user's choice of ``--out``, normally under ``data_dir()``); the state lives in
``config_dir()/model_versions.json``::

    {"cxr-pneumonia": {"candidates": {"1.0.0+site.1": {"folder": ..., "base_version": "1.0.0",
                                                        "sha256": {"model.json": ..., ...}}},
                       "active": "1.0.0+site.1" | null,      # null: the shipped/installed model
                       "stack": ["1.0.0+site.2"],            # the versions active before, oldest first
                       "history": [{"time_utc", "action", "version", "reason"}]}}

The registry puts the active version's folder first among its sources
(:func:`promoted_sources`), so every caller (GUI, analyze, batch, demo) runs it; ``rollback``
pops the ``stack`` of previously active versions, ending at the shipped one (a state file
written before the stack existed has it rebuilt from its history).  Promoting the version that
is already active changes nothing (and says so).

A candidate is tied to what was measured: ``register_candidate`` records the sha256 of its
``model.json``, ``metrics.json``, every weights file the card lists and its OOD statistics;
:func:`promoted_sources` checks them each time the registry asks, and the registry refuses that
model in one line when the folder is gone or a file changed (the state says it is active: running
the shipped model instead, or the changed files, would be a silent substitution).  The same for
the state file itself: a damaged entry refuses that model only, and a file that cannot be read at
all refuses every model (which ones have a promoted version is unknown) in one line naming it,
until it is repaired or deleted (deleting it returns every model to its shipped version).  Every
step is an event in the prediction log and in the audit trail.
"""

from __future__ import annotations

import json
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
# No verdict below this many patients per class in a comparison (classifiers; segmenters: patients
# in all): with a handful of images every cluster-bootstrap resample gives the same AUC, so the
# interval collapses to zero width ("1.000 [1.000-1.000]") and would "pass" on no evidence.
MIN_PATIENTS_PER_CLASS = 8


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


def _read_state() -> dict:
    """The state file's object as it is (entries not checked); {} when there is none; a
    one-line UserError when it cannot be read."""
    p = state_path()
    if not p.is_file():
        return {}
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise UserError(f"cannot read {p}: {_one_line(e)}") from None
    return d


def _one_line(e) -> str:
    s = str(e)
    return s.encode("unicode_escape").decode("ascii") if "\n" in s or "\r" in s else s


def load_state() -> dict:
    p = state_path()
    d = _read_state()
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
    if not all(v.get("sha256") is None or (isinstance(v["sha256"], dict)
                                           and all(isinstance(x, str) for x in v["sha256"].values()))
               for v in c.values()):
        return "a candidate's sha256 must map file names to hashes"
    if a is not None and (not isinstance(a, str) or a not in c):
        return f"the active version {str(a)[:40]!r} is not a candidate"
    if not isinstance(h, list) or not all(isinstance(x, dict) for x in h):
        return "history must be a list of objects"
    st = m.get("stack")
    if st is not None and (not isinstance(st, list) or not all(isinstance(x, str) and x in c for x in st)):
        return "stack must be a list of candidate versions"
    return None


def _stack(m: dict) -> list[str]:
    """The versions active before the current one, oldest first (the shipped model below them).
    A state file written before the stack existed: rebuilt by replaying its history (promote
    pushes the version it replaced unless it re-promoted the active one; rollback pops); when
    the replay does not end at the recorded active version, the stack is empty (rollback then
    returns to the shipped model)."""
    if isinstance(m.get("stack"), list):
        return list(m["stack"])
    active, stack = None, []
    for h in m.get("history") or []:
        if h.get("action") == "promote" and isinstance(h.get("version"), str):
            if h["version"] != active:
                if active is not None:
                    stack.append(active)
                active = h["version"]
        elif h.get("action") == "rollback":
            active = stack.pop() if stack else None
    if active != m.get("active"):
        return []
    cands = m.get("candidates") or {}
    return [v for v in stack if v in cands]


def save_state(d: dict) -> None:
    """Write the state atomically through a temporary file of its own (one shared temporary name
    let two processes rename each other's half-written file into place, or find it gone).  A
    read-modify-write holds :func:`state_locked` around its load_state() and save_state()."""
    from ..userdirs import write_json_atomic

    write_json_atomic(state_path(), d, indent=2)


def state_locked():
    """Hold the state file's lock: a promote, rollback or new candidate of another process (a
    second window, the CLI) between this one's read and write would otherwise be lost.  Held
    for 10 s, or a folder that cannot be written: one UserError line."""
    from ..userdirs import locked

    return locked(state_path(), error=UserError)


# The key of promoted_sources()'s refusals that refuses every model: the state file cannot be
# read, so which models have a promoted version is unknown (the registry reads it beside the id).
EVERY_MODEL = "*"


def promoted_sources() -> tuple[list[Path], dict[str, str]]:
    """(folders of the active versions that still hold what was measured, {model id: one-line
    reason} for those that do not): the registry runs the first and refuses the models of the
    second (only those: one changed candidate or one damaged entry of the state file must not
    stop every other model, nor let the shipped model run under the promoted name).  A state
    file that cannot be read at all refuses every model: which of them have a promoted version
    is unknown, and running the shipped ones would be the silent substitution this refuses."""
    p = state_path()
    try:
        st = _read_state()
        if not isinstance(st, dict):
            raise UserError(f"cannot read {p}: not a JSON object")
    except UserError as e:
        return [], {EVERY_MODEL: f"{e}; not running the shipped models in place of the promoted ones: repair the "
                               f"file, or delete it to return every model to its shipped version (the candidate "
                               f"folders are kept)"}
    good, bad = [], {}
    for model_id, m in st.items():
        why = _bad_entry(m)
        if why:  # this model only: the others' entries are read
            bad[model_id] = _one_line(f"{model_id}: its entry in {p} is damaged ({why}); not running the shipped "
                                      f"model in its place: repair or remove that entry (removing it returns "
                                      f"{model_id} to its shipped version)")
            continue
        a = m.get("active")
        if a and a in m["candidates"]:
            try:
                good.append(check_candidate(model_id, a, m["candidates"][a]))
            except UserError as e:  # one line, whatever the state file's folder holds
                bad[model_id] = _one_line(e)
    return good, bad


# files whose sha256 ties a candidate to its measurement (when present in the folder)
_TIED_FILES = ("model.json", "metrics.json")


def candidate_hashes(folder: Path) -> dict[str, str]:
    """sha256 of the candidate's model.json, metrics.json, every weights file its card lists and
    its OOD statistics (those present).  Not its monitor reference: refitting that (python -m
    imaging_assist.monitoring.reference) changes what the monitor compares with, not the model."""
    from ..models.loaders import sha256_file

    folder = Path(folder)
    names = list(_TIED_FILES)
    try:
        card = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        card = {}
    for w in (card.get("weights") or []) if isinstance(card, dict) else []:
        if isinstance(w, dict) and isinstance(w.get("file"), str):
            names.append(w["file"])
    ood = card.get("ood") if isinstance(card, dict) else None
    if isinstance(ood, dict) and isinstance(ood.get("file"), str):
        names.append(ood["file"])
    return {n: sha256_file(folder / n) for n in dict.fromkeys(names) if (folder / n).is_file()}


_hashed: dict = {}  # (path, inode, size, mtime, ctime) -> sha256: the registry asks on every Registry()


def _sha256_of(p: Path) -> str:
    """sha256 of ``p``, hashed again only when the file may have changed: its inode, size, mtime or
    ctime (a write always moves the ctime, which no one can set back)."""
    from ..models.loaders import sha256_file

    st = p.stat()
    key = (str(p), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _hashed:
        _hashed[key] = sha256_file(p)
    return _hashed[key]


def check_candidate(model_id: str, version: str, entry: dict) -> Path:
    """The candidate's folder when it still holds what was measured; else a one-line UserError
    (folder missing, a recorded file missing or changed).  Candidates registered before hashes
    were recorded are checked for their folder only."""
    f = Path(entry["folder"])
    fix = f"restore it, or roll back with: imaging-assist models rollback {model_id}"
    if not f.is_absolute() or not f.is_dir() or not (f / "model.json").is_file():
        raise UserError(f"{model_id}: the promoted version {version} is missing ({f} is not a model folder); "
                        f"not running the shipped model in its place: {fix}")
    want = entry.get("sha256")
    if want:
        for name, h in want.items():
            p = f / name
            if not p.is_file():
                raise UserError(f"{model_id}: the promoted version {version} lost {name} ({p}) since it was "
                                f"measured; refusing to run it: {fix}")
            if _sha256_of(p) != h:
                raise UserError(f"{model_id}: {name} of the promoted version {version} ({p}) changed since it was "
                                f"measured (sha256 differs); refusing to run it: {fix}")
    return f


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


def register_candidate(model_id: str, version: str, folder: Path, base_version: str, detail: dict) -> str:
    """Record ``folder`` as the candidate ``version``; returns the version it was recorded under.
    Two fine-tunes of one model run at once (two terminals, a second window) took the same
    ``next_version`` at their start, and the second one's registration replaced the first: its
    folder lost from the state, and "site.1" promoted was the second model while its measures
    may have been read in the first one's folder.  Now the later one is renumbered under the
    lock: the next free version, written into its card, metrics and monitor reference."""
    hashes = candidate_hashes(folder)  # before the lock: hashing the weights takes seconds
    folder = Path(folder).resolve()
    with state_locked():
        st = load_state()
        m = st.setdefault(model_id, {"candidates": {}, "active": None, "history": []})
        taken = m["candidates"].get(version)
        if isinstance(taken, dict) and taken.get("folder") != str(folder):
            new = _free_version(m["candidates"], version)
            _renumber(folder, version, new)
            from ..models.loaders import sha256_file

            hashes.update({n: sha256_file(folder / n) for n in _TIED_FILES if (folder / n).is_file()})
            detail = {**detail, "renumbered_from": version}
            version = new
        m["candidates"][version] = {"folder": str(folder), "base_version": base_version, "sha256": hashes}
        m["history"].append(_hist("candidate", version, None))
        save_state(st)
    _event("finetune", model_id, version, detail)
    return version


def _free_version(candidates: dict, version: str) -> str:
    root = version.split("+")[0]
    n = 1
    while f"{root}+site.{n}" in candidates:
        n += 1
    return f"{root}+site.{n}"


def _renumber(folder: Path, old: str, new: str) -> None:
    """``old`` -> ``new`` where a candidate folder names its own version: the card (version, name,
    the last fine-tuning history entry), metrics.json and the monitor reference."""
    def edit(name, change):
        p = folder / name
        if p.is_file():
            doc = json.loads(p.read_text(encoding="utf-8"))
            change(doc)
            p.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")

    def card(d):
        d["version"] = new
        if isinstance(d.get("name"), str):
            d["name"] = d["name"].replace(old, new)
        hist = (d.get("data") or {}).get("fine_tuning_history") if isinstance(d.get("data"), dict) else None
        for h in hist if isinstance(hist, list) else ():
            if isinstance(h, dict) and h.get("version") == old:
                h["version"] = new

    def metrics(d):
        if d.get("version") == old:
            d["version"] = new

    def reference(d):
        if d.get("model_version") == old:
            d["model_version"] = new

    edit("model.json", card)
    edit("metrics.json", metrics)
    edit("monitor_reference.json", reference)


def _hist(action, version, reason):
    from .log import now_utc

    return {"time_utc": now_utc()[0], "action": action, "version": version, "reason": reason}


def _candidate_entry(model_id: str, version: str) -> dict:
    c = ((load_state().get(model_id) or {}).get("candidates") or {}).get(version)
    if not c:
        raise UserError(f"{model_id} has no candidate version {version!r} (see `imaging-assist finetune`)")
    return c


def candidate_folder(model_id: str, version: str) -> Path:
    return Path(_candidate_entry(model_id, version)["folder"])


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
        short = too_few_patients(c)
        if short:
            why.append(f"{name}: not enough data to judge: {short}")
        elif lo is None:
            why.append(f"{name}: no interval")
        elif not lo > -margin:  # NaN fails too
            why.append(f"{name}: {what} difference {c['diff']:+.3f} (95% CI {lo:+.3f} to {c['diff_ci95'][1]:+.3f}) "
                       f"does not exclude a loss of {margin}")
    return not why, why


def too_few_patients(c: dict) -> str | None:
    """Why comparison ``c`` holds too few patients for a verdict (None: enough).  Its counts are
    ``patients`` and, for classifiers, ``patients_per_class`` ({class: patients}); a metrics.json
    written before they were recorded is not checked."""
    k = MIN_PATIENTS_PER_CLASS
    n = c.get("patients")
    per = c.get("patients_per_class")
    if isinstance(per, dict) and per:
        counts = [v if is_number(v) else 0 for v in per.values()]
        if min(counts) < k:
            return (f"{n} patients / {' and '.join(f'{v} {lab}' for lab, v in per.items())} per class, "
                    f"at least {k} per class needed")
    elif is_number(n) and n < k:
        return f"{n} patients, at least {k} needed"
    return None


def promote(model_id: str, version: str, force_reason: str | None = None) -> dict:
    # Checked once before the lock (hashing the candidate's weights takes seconds); under the lock
    # check_candidate finds the hashes cached unless a file changed meanwhile.
    check_candidate(model_id, version, _candidate_entry(model_id, version))
    with state_locked():  # the state read here is the one written below: nothing in between
        folder = candidate_folder(model_id, version)
        st = load_state()
        entry = st[model_id]["candidates"][version]
        check_candidate(model_id, version, entry)  # promote only what was measured
        if st[model_id].get("active") == version:
            return {"model_id": model_id, "active": version, "previous": version, "forced": False, "reasons": [],
                    "unchanged": True,
                    "message": f"{model_id} {version} is already the active version: nothing changed"}
        mp = folder / "metrics.json"
        if not mp.is_file():
            raise UserError(f"{mp} is missing: the candidate was not measured")
        try:
            metrics = json.loads(mp.read_text(encoding="utf-8"))
            ok, why = non_inferiority(metrics)
        except (OSError, ValueError, RecursionError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise UserError(f"{mp} is not a candidate's metrics file ({type(e).__name__}: "
                            f"{' '.join(str(e).split())[:120]})") from None
        refused = not ok and not force_reason
        if not refused:
            m = st[model_id]
            prev = m.get("active")
            stack = _stack(m)
            if prev is not None:
                stack.append(prev)
            m["stack"] = stack
            m["active"] = version
            m["history"].append(_hist("promote", version, force_reason or "non-inferior"))
            m["history"][-1]["previous"] = prev
            save_state(st)
    if refused:  # recorded after the lock is let go (the log and the audit trail have their own)
        _event("promote_refused", model_id, version, {"reasons": why})
        ni = metrics.get("non_inferiority") or {}
        msg = (f"{model_id} {version} not promoted (non-inferiority on {ni.get('metric', 'AUC')}, margin "
               f"{ni.get('margin', DEFAULT_MARGIN)}): " + "; ".join(why) + " (use --force REASON to override)")
        raise UserError(" ".join(msg.split()))  # values from metrics.json: one line
    _event("promote", model_id, version, {"previous": prev, "forced": bool(force_reason and not ok),
                                          "reason": force_reason, "failed_checks": why})
    return {"model_id": model_id, "active": version, "previous": prev, "forced": bool(force_reason and not ok),
            "reasons": why}


def rollback(model_id: str) -> dict:
    with state_locked():  # the state read here is the one written below: nothing in between
        st = load_state()
        m = st.get(model_id)
        if not m or not m.get("active"):
            raise UserError(f"{model_id}: no promoted version to roll back (the shipped model is active)")
        cur = m["active"]
        stack = _stack(m)
        prev = stack.pop() if stack else None
        m["stack"] = stack
        m["active"] = prev
        m["history"].append(_hist("rollback", prev, f"from {cur}"))
        save_state(st)
    _event("rollback", model_id, prev, {"from": cur})
    return {"model_id": model_id, "active": prev, "from": cur}


def status(model_id: str) -> dict:
    return load_state().get(model_id) or {"candidates": {}, "active": None, "history": []}
