"""``imaging-assist models list|add|show|trust|untrust|verify``: the model registry.

Handlers return an exit code (0 ok, 1 when a check failed) and raise ``UserError`` for
one-line errors.
"""

from __future__ import annotations

import json
import sys

from ..errors import UserError
from .common import fmt_table


def register(subparsers) -> None:
    m = subparsers.add_parser("models", help="list, add and verify AI models")
    msub = m.add_subparsers(dest="models_command", metavar="ACTION")
    m.set_defaults(func=lambda args: (m.print_help(), 2)[1])

    s = msub.add_parser("list", help="show id, task, modality, version, source and verification")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--no-verify", action="store_true", help="do not hash the weights")
    s.set_defaults(func=cmd_models_list)

    s = msub.add_parser("add", help="add a folder of models (or one model folder / MONAI bundle)")
    s.add_argument("path", metavar="PATH")
    s.set_defaults(func=cmd_models_add)

    s = msub.add_parser("verify", help="check the sha256 of every weights file")
    s.add_argument("ids", nargs="*", metavar="ID", help="models to check (default: all)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_models_verify)


def _registry():
    from ..models.registry import Registry

    return Registry()


def cmd_models_list(args) -> int:
    reg = _registry()
    entries = reg.entries()
    if not args.no_verify:
        for e in entries:
            if e.card is not None:
                reg.verify_entry(e)
    if args.json:
        json.dump({"models": [e.to_dict() for e in entries],
                   "sources": [{"folder": str(f), "source": s} for f, s in reg.sources()]},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not entries:
        print("no models found; add one with `imaging-assist models add PATH` (searched: "
              + ", ".join(str(f) for f, _ in reg.sources()) + ")")
        return 0
    rows = []
    for e in entries:
        c = e.card
        ver = {True: "yes", False: "NO", None: "-"}[e.verified]
        if e.error:
            rows.append([e.id, "-", "-", "-", e.source, "invalid"])
            continue
        rows.append([e.id + (" (shadowed)" if e.shadowed_by else ""), f"{c.task} {c.spatial_dims}D",
                     "/".join(c.modality) + (f" {c.body_part}" if c.body_part else ""), c.version,
                     e.source, ver])
    print(fmt_table(rows, ["ID", "TASK", "MODALITY", "VERSION", "SOURCE", "VERIFIED"]))
    for e in entries:
        if e.error:
            print(f"warning: {e.error}", file=sys.stderr)
        elif e.verified is False:
            bad = next(v for v in e.verify if not v.ok)
            print(f"warning: {bad.message}", file=sys.stderr)
    return 0


def cmd_models_add(args) -> int:
    reg = _registry()
    entries = reg.add_folder(args.path)
    for e in entries:
        if e.error:
            print(f"warning: {e.error}", file=sys.stderr)
        else:
            print(f"added {e.card.id} {e.card.version} ({e.card.task}, {'/'.join(e.card.modality)}) "
                  f"from {e.folder}")
    return 0


def cmd_models_verify(args) -> int:
    reg = _registry()
    entries = [reg.get(i) for i in args.ids] if args.ids else [e for e in reg.entries() if e.card]
    failed = 0
    out = []
    for e in entries:
        reg.verify_entry(e)
        out.append(e.to_dict())
        if not e.verified:
            failed += 1
    if args.json:
        json.dump({"models": out}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for e in entries:
            for v in e.verify:
                print(f"{e.id}: {v.file}: {'ok (' + v.algorithm + ')' if v.ok else 'FAILED: ' + v.message}")
        if not entries:
            print("no models to verify")
    return 1 if failed else 0
