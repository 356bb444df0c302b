"""``imaging-assist nodule-growth PRIOR CURRENT [--prior-id ID] [--current-id ID] [--prior-series UID]
[--current-series UID] [--json]``:
one nodule's growth between two CT nodule analyses (each a ``results.json``, or the folder
holding it, written by ``imaging-assist analyze ... --model ct-nodule-*``): volume change,
volume doubling time, mean-diameter change (``imaging_assist.nodules.growth.compare``: the same
checks as ``analyze --prior`` and the viewer).  The reader names which nodule of each study is the
same one (its id, and its series when a results.json holds several series with that id); nothing
is registered or matched here."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from .common import print_json

MAX_RESULTS_BYTES = 64 << 20


def register(sub) -> None:
    s = sub.add_parser("nodule-growth", help="a nodule's growth (volume change, doubling time) between a "
                                             "prior and a current CT nodule analysis")
    s.add_argument("prior", metavar="PRIOR", help="results.json (or its folder) of the older study")
    s.add_argument("current", metavar="CURRENT", help="results.json (or its folder) of the newer study")
    s.add_argument("--prior-id", metavar="ID", help="the nodule's id in PRIOR (needed when it found several)")
    s.add_argument("--current-id", metavar="ID", help="the nodule's id in CURRENT (needed when it found several)")
    s.add_argument("--prior-series", metavar="UID", help="the series (SeriesInstanceUID) of the nodule in PRIOR "
                                                         "(needed when several of its series have that id)")
    s.add_argument("--current-series", metavar="UID", help="the series (SeriesInstanceUID) of the nodule in CURRENT "
                                                           "(needed when several of its series have that id)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_nodule_growth)


def read_results(path: str) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    from ..nodules.run import read_regular

    try:
        raw = read_regular(p, MAX_RESULTS_BYTES, str(p))  # a pipe or a device: refused, not waited on
        if len(raw) > MAX_RESULTS_BYTES:
            raise UserError(f"{p}: larger than {MAX_RESULTS_BYTES >> 20} MB, not a results.json")
        data = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"{p}: not a readable results.json ({type(e).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise UserError(f"{p}: not a results.json (no items)")
    return data


def _nodule(path: str, data: dict, wanted: str | None, which: str, series: str | None = None):
    """(nodule entry, its item) found in a results.json (of the item of series ``series`` when
    given); one line when it is not one."""
    found = []
    for it in data["items"]:
        if not isinstance(it, dict) or it.get("task") != "nodule":
            continue
        if series is not None and it.get("series_uid") != series:
            continue
        for n in it.get("nodules") if isinstance(it.get("nodules"), list) else []:
            if isinstance(n, dict) and n.get("found") and (wanted is None or str(n.get("id")) == wanted):
                found.append((n, it))
    if not found:
        what = f"nodule {wanted!r}" if wanted else "nodule found"
        where = f" of series {series[:64]!r}" if series is not None else ""
        raise UserError(f"{path}: no {what}{where} in this results.json (analyse with --model ct-nodule-malignancy)")
    if len(found) > 1:
        ids = [str(n.get("id")) for n, _ in found]
        msg = f"{path}: {len(found)} nodules ({', '.join(ids[:8])}): name one with --{which}-id"
        if len(set(ids)) < len(ids):  # the same id in several items: the series tells them apart
            uids = list(dict.fromkeys(str(it.get("series_uid")) for _, it in found))
            msg += f" and --{which}-series (series: {', '.join(uids[:4])})"
        raise UserError(msg)
    return found[0]


def cmd_nodule_growth(args) -> int:
    from ..nodules.growth import Measured, compare

    sides = []
    for path, wanted, series, which in ((args.prior, args.prior_id, getattr(args, "prior_series", None), "prior"),
                                        (args.current, args.current_id, getattr(args, "current_series", None),
                                         "current")):
        n, it = _nodule(path, read_results(path), wanted, which, series)
        if not it.get("study_date"):
            raise UserError(f"{path}: the analysis records no study date (re-run `imaging-assist analyze` "
                            "with this version)")
        try:
            sides.append((Measured.from_result(n, it["study_date"], it.get("slice_thickness_mm"),
                                               label=str(n.get("id"))), n, it))
        except ValueError as e:
            raise UserError(f"{path}: {e}") from None
    (a, na, ia), (b, nb, ib) = sides
    if ia.get("series_uid") and ia.get("series_uid") == ib.get("series_uid"):
        raise UserError("PRIOR and CURRENT are the same series: nothing to compare")
    try:
        g = compare(na, ia, nb, ib)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.json:
        print_json(dict(g, not_for_clinical_use=True))
        return 0
    print(f"nodule {a.label} ({a.date.isoformat()}, {a.volume_mm3:.0f} mm³) -> {b.label} "
          f"({b.date.isoformat()}, {b.volume_mm3:.0f} mm³): {g['text']}")
    for w in g["warnings"]:
        print(f"warning: {w}")
    print("NOT FOR CLINICAL USE: the reader decides whether the two are the same nodule and what the change means")
    return 0
