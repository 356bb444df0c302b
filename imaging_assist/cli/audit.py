"""``imaging-assist audit show|verify|path``: read and check the audit trail
(:mod:`imaging_assist.privacy.audit`).

* ``audit show [--since DATE] [--json] [--patient ID] [--uid UID]``: the events, oldest first;
  ``--patient``/``--uid`` find one patient's or study's events by recomputing their keyed
  pseudonym (the log never holds them in clear), and that of the de-identified copy the same
  site key makes (the events of ``analyze --deidentify`` name the copy).
* ``audit verify [--anchor N:SHA256]``: exit 0 when the chain, the seals and the head record
  hold; otherwise one line naming the first broken line, exit 2 (also when the site key is
  missing, since the seals then cannot be checked, and for a malformed ``--anchor``).
  ``audit show`` says the same when the trail holds no readable record but ``verify`` finds
  it deleted or replaced.
* ``audit path``: where the log is.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys

from ..errors import UserError
from ..safe_text import printable


def register(sub) -> None:
    a = sub.add_parser("audit", help="show or verify the audit trail (who opened, ran, exported what)")
    asub = a.add_subparsers(dest="audit_command", metavar="ACTION")
    s = asub.add_parser("show", help="list the recorded events, oldest first")
    s.add_argument("--since", metavar="DATE", help="only events at or after DATE (ISO: 2026-12-01 or "
                                                    "2026-12-01T08:00; UTC unless an offset is given)")
    s.add_argument("--json", action="store_true", help="the stored JSON lines as they are")
    s.add_argument("--patient", metavar="ID", help="only events about this Patient ID")
    s.add_argument("--uid", metavar="UID", help="only events naming this study/series/instance UID")
    s.add_argument("--event", metavar="NAME", help="only this event (e.g. model.run, export)")
    v = asub.add_parser("verify", help="check that no line was edited, deleted, reordered or cut off")
    v.add_argument("--anchor", metavar="N:SHA256", type=_anchor,
                   help="a head printed by an earlier verify and kept elsewhere: line N must still match")
    asub.add_parser("path", help="print where the audit log is")
    a.set_defaults(func=cmd_audit)


def _anchor(text: str) -> str:
    """argparse type: a typo in ``--anchor`` is a usage error, not a broken trail."""
    from ..privacy.audit import parse_anchor

    try:
        parse_anchor(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("anchor ")) from None
    return text


def _since(text: str) -> _dt.datetime:
    try:
        t = _dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"--since {text!r}: expected an ISO date such as 2026-12-01 or 2026-12-01T08:00") from None
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def _time(obj: dict) -> _dt.datetime | None:
    try:
        t = _dt.datetime.fromisoformat(str(obj.get("time")))
        return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        return None


def _values(v):
    if isinstance(v, dict):
        for x in v.values():
            yield from _values(x)
    elif isinstance(v, list):
        for x in v:
            yield from _values(x)
    else:
        yield v


def _fmt(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))


def cmd_audit(args) -> int:
    from ..privacy import audit

    action = getattr(args, "audit_command", None)
    if action == "path":
        print(audit.log_path())
        return 0
    if action == "verify":
        # strict: a trail sealed here is not "OK" while its seals cannot be checked
        ok, line, reason = audit.verify(anchor=args.anchor, require_key=True)
        if not ok:
            _broken(audit, line, reason)
        print(f"audit trail OK: {reason}")
        return 0
    if action != "show":
        raise UserError("audit: choose show, verify or path (see `imaging-assist audit --help`)")
    since = _since(args.since) if args.since else None
    wanted: set[str] = set()
    if args.patient or args.uid:
        from ..privacy.sitekey import key_path

        if not key_path().exists():  # never make a new key here: it would not match, and would seal on
            raise UserError(f"--patient/--uid: the site key {key_path()} is missing, so the pseudonyms "
                            "cannot be recomputed; restore it from a backup of the config folder")
    if args.patient:  # also the pseudonym of its de-identified copy (analyze --deidentify)
        wanted.update(audit.patient_pseudonyms(args.patient))
    if args.uid:
        wanted.update(audit.uid_pseudonyms(args.uid))
    shown = records = 0
    for n, obj in enumerate(audit.iter_entries(), 1):  # streamed: a trail of many parts stays out of memory
        if obj is None:
            if not args.json:
                print(f"{n:>6}  (line {n} is not an audit record: run `imaging-assist audit verify`)")
            continue
        records += 1
        if since is not None:
            t = _time(obj)
            if t is None or t < since:
                continue
        if args.event and obj.get("event") != args.event:
            continue
        fields = obj.get("fields") if isinstance(obj.get("fields"), dict) else {}
        if wanted and not wanted & {x for x in _values(fields) if isinstance(x, str)}:
            continue
        shown += 1
        if args.json:
            sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
            continue
        t = str(obj.get("time", ""))[:19].replace("T", " ")
        kv = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items() if v not in (None, "", [], {}))
        print(printable(f"{obj.get('seq', n):>6}  {t}Z  {obj.get('user', '?')}@{obj.get('host', '?')}  "
                        f"{obj.get('event', '?')}  {kv}".rstrip()))  # paths and names: no control sequences
    if not records:  # nothing readable: an empty trail, or one deleted or replaced (say which)
        ok, line, reason = audit.verify()
        if not ok:
            _broken(audit, line, reason)
    if not shown and not args.json:
        print("no audit events" + (" match" if (since or wanted or args.event) else " recorded yet")
              + f" ({audit.log_path()})", file=sys.stderr)
    return 0


def _broken(audit, line, reason) -> None:
    """The one-line error (exit 2) for a trail that does not hold, or cannot be checked."""
    where = audit.log_path() if not audit.parts() else audit.audit_dir()
    if reason.startswith(audit.KEY_MISSING):
        raise UserError(f"audit trail not verified: {reason} ({where})")
    at = f" at line {line}" if line else ""
    raise UserError(f"audit trail broken{at}: {reason} ({where})")
