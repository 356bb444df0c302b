"""Site operating points: a threshold a site measured on its own patients
(``imaging-assist evaluate --save-site-threshold``), kept beside the user configuration and
never written into the shipped card.

One JSON file per model, ``<config_dir>/site_thresholds/<model id>.json``, holding every saved
version (``versions``: newest last; earlier ones are kept, so a change can be traced and
undone).  A saved point applies only to the model version and weights it was measured on
(``model_version`` and the weights' sha256): after a model update the card's own threshold is
used again and the decision says why.  An unreadable file never stops a run: the card's
threshold is used and the decision carries the reason (``note``).

Everywhere a decision is shown it reads e.g. "site threshold 0.62, from 412 local studies,
2026-12-04" (:func:`site_text`).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..userdirs import locked, write_json_atomic
from .card import Threshold
from .paths import config_dir

SCHEMA_VERSION = 1
MAX_FILE_BYTES = 1 << 20


@dataclass
class SiteThreshold(Threshold):
    """A card Threshold measured at this site (same fields, plus where it came from)."""

    n_studies: int = 0
    date: str = ""
    version: int = 0
    note: str = ""

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update({"source": "site", "n_studies": self.n_studies, "date": self.date,
                  "site_version": self.version, "note": self.note})
        return d


def site_dir() -> Path:
    return config_dir() / "site_thresholds"


def site_file(model_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("._") or "model"
    return site_dir() / f"{safe}.json"


def site_text(threshold: float, n_studies: int, date: str) -> str:
    return f"site threshold {threshold:.4g}, from {n_studies:,} local studies, {date}"


def _weights_hash(card) -> str | None:
    ws = getattr(card, "weights", None) or []
    hashes = sorted(str(getattr(w, "sha256", "") or "") for w in ws)
    return ",".join(h for h in hashes if h) or None


def _read(model_id: str) -> dict:
    p = site_file(model_id)
    if not p.exists():
        return {"schema_version": SCHEMA_VERSION, "model": model_id, "versions": []}
    if not p.is_file() or p.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"{p} is not a small regular file")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError(f"{p} is nested too deeply") from None
    if not isinstance(d, dict) or not isinstance(d.get("versions"), list):
        raise ValueError(f"{p} has no 'versions' list")
    return d


def save_site_threshold(card, label: str, threshold: float, n_studies: int, *,
                        sensitivity: float | None = None, specificity: float | None = None,
                        target_sensitivity: float | None = None, data: str = "",
                        evaluation: str = "", date: str | None = None) -> tuple[Path, dict]:
    """Append a new version of the site's operating point for ``card``'s ``label``; return
    (file, entry).  Written atomically, under the file's lock (another process's version saved
    between the read and the write is kept, and numbered apart); the card file is never touched."""
    if label not in card.labels:
        raise ValueError(f"{label!r} is not a label of {card.id}")
    if not (0.0 <= float(threshold) <= 1.0):
        raise ValueError(f"threshold {threshold} outside 0..1")
    p = site_file(card.id)
    with locked(p, error=UserError):  # held elsewhere for 10 s: one line, never an internal error
        try:
            d = _read(card.id)
        except (ValueError, OSError) as e:
            # keep the unreadable file for inspection instead of overwriting what was there
            p.replace(p.with_suffix(f".unreadable-{_dt.datetime.now():%Y%m%d%H%M%S}.json"))
            d = {"schema_version": SCHEMA_VERSION, "model": card.id, "versions": [],
                 "replaced_unreadable": str(e)[:200]}
        version = 1 + max((_int(v.get("version")) for v in d["versions"] if isinstance(v, dict)), default=0)
        entry = {"version": version, "label": label,
                 "threshold": math.floor(float(threshold) * 1e6) / 1e6,  # down: never above the chosen score
                 "n_studies": int(n_studies), "date": date or _dt.date.today().isoformat(),
                 "sensitivity": sensitivity, "specificity": specificity,
                 "target_sensitivity": target_sensitivity, "data": data, "evaluation": evaluation,
                 "model_version": card.version, "weights_sha256": _weights_hash(card)}
        d["versions"].append(entry)
        write_json_atomic(p, d, indent=2)
    return p, entry


def site_thresholds(card) -> tuple[dict[str, SiteThreshold], list[str]]:
    """({label: SiteThreshold} that apply to this card, notes on saved points that do not)."""
    try:
        d = _read(card.id)
    except (ValueError, OSError) as e:  # json.JSONDecodeError is a ValueError
        return {}, [f"site threshold file unreadable ({str(e)[:120]}): the card's threshold is used"]
    out: dict[str, SiteThreshold] = {}
    notes: list[str] = []
    wh = _weights_hash(card)
    for v in d["versions"]:
        try:
            lab, thr = str(v["label"]), float(v["threshold"])
            n, date = int(v["n_studies"]), v["date"]
            if isinstance(v["threshold"], (bool, str)) or n < 0 or not isinstance(date, str) \
                    or date.splitlines() != [date]:  # a date shown in one line beside each decision
                raise ValueError("threshold, n_studies or date")
        except (KeyError, TypeError, ValueError, OverflowError):
            notes.append("a saved site threshold entry is incomplete: ignored")
            continue
        if lab not in card.labels or not 0.0 <= thr <= 1.0:
            notes.append(f"saved site threshold for {lab!r} does not fit the model: ignored")
            continue
        if v.get("model_version") != card.version or (wh and v.get("weights_sha256") not in (None, wh)):
            mv = " ".join(str(v.get("model_version")).split())[:40]
            notes.append(f"site threshold {thr:g} ({date}) was measured on model version "
                         f"{mv}, not {card.version}: the card's threshold is used")
            continue
        out[lab] = SiteThreshold(thr, _num(v.get("sensitivity")), _num(v.get("specificity")),
                                 str(v.get("data", "")), n, date, _int(v.get("version")),
                                 site_text(thr, n, date))
    # a newer version that applies wins; drop notes about older versions it supersedes
    return out, ([] if out else notes)


def _int(x) -> int:
    """A saved entry's version number; 0 when a hand-edited file has something else there."""
    try:
        return int(x)
    except (TypeError, ValueError, OverflowError):
        return 0


def _num(x):
    try:
        f = float(x)
    except (TypeError, ValueError, OverflowError):
        return None
    return f if 0.0 <= f <= 1.0 else None


def effective_thresholds(card) -> tuple[dict, dict[str, str]]:
    """The thresholds a run uses: the card's, with this site's saved points in their place;
    and {label: note} to show beside each decision (the site text, or why the card's is used)."""
    site, notes = site_thresholds(card)
    th = dict(card.thresholds)
    # only in place of the card's own: a point for another label would add a decision to every run
    site = {lab: t for lab, t in site.items() if lab in th}
    th.update(site)
    out_notes = {lab: t.note for lab, t in site.items()}
    if notes:
        for lab in card.thresholds:
            out_notes.setdefault(lab, notes[-1])
    return th, out_notes
