"""``imaging-assist models list|add|show|trust|untrust|verify``: the model registry.

A model folder whose configs hold code (MONAI bundle ``$`` expressions, ``_target_`` outside
the allowlist...: :func:`imaging_assist.models.trust.bundle_code`, read without running
anything) runs only after ``models trust ID``, which records the hash of its weights and
configs; a changed config is not trusted any more.  ``add`` and ``show`` print that code.

Handlers return an exit code (0 ok, 1 when a check failed) and raise ``UserError`` for
one-line errors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import UserError
from .common import fmt_table


def register(subparsers) -> None:
    m = subparsers.add_parser("models", help="list, add, show, trust and verify AI models")
    msub = m.add_subparsers(dest="models_command", metavar="ACTION")
    m.set_defaults(func=lambda args: (m.print_help(), 2)[1])

    s = msub.add_parser("list", help="show id, task, modality, version, source, code/trust and verification")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--no-verify", action="store_true", help="do not hash the weights")
    s.set_defaults(func=cmd_models_list)

    s = msub.add_parser("add", help="add a folder of models (or one model folder / MONAI bundle); "
                                    "prints the code a bundle contains")
    s.add_argument("path", metavar="PATH")
    s.set_defaults(func=cmd_models_add)

    s = msub.add_parser("show", help="the card summary of a model and the code its configs contain")
    s.add_argument("id", metavar="ID", help="model id or model folder")
    s.add_argument("--all", action="store_true",
                   help="also list code in parts imaging-assist never runs (training configs...)")
    s.set_defaults(func=cmd_models_show)

    s = msub.add_parser("trust", help="allow a model's code to run (records the hash of its weights "
                                      "and configs; asks first)")
    s.add_argument("id", metavar="ID", help="model id or model folder")
    s.add_argument("--yes", action="store_true", help="do not ask (needed when not on a terminal)")
    s.set_defaults(func=cmd_models_trust)

    s = msub.add_parser("untrust", help="withdraw the trust given with `models trust`")
    s.add_argument("id", metavar="ID", help="model id or model folder")
    s.set_defaults(func=cmd_models_untrust)

    s = msub.add_parser("verify", help="check the sha256 of every weights file")
    s.add_argument("ids", nargs="*", metavar="ID", help="models to check (default: all)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_models_verify)

    from .finetune import register_versions  # issue 18: compare / promote / rollback

    register_versions(msub)


def _registry():
    from ..models.registry import Registry

    return Registry()


# =========================================================================== code and trust
def _code_items(e) -> list:
    """The code a model folder contains (file, key, text), found without running anything;
    TorchScript weights are one item (a program, run as it is loaded)."""
    if e.card is None or not getattr(e, "contains_code", False):
        return []
    from ..models.bundle_code import CodeItem, bundle_code
    from ..models.registry import is_program

    items = list(bundle_code(e.folder)) if e.card.is_bundle else []
    if is_program(e.card):
        items.append(CodeItem(str(e.card.weights[0].file), "", "TorchScript program: its code runs when it is "
                              "loaded (it can read and write files as you)", "torchscript", True))
    return items


def _code_lines(items, mid: str, indent: str = "  ", everything: bool = False) -> list[str]:
    """``contains code:`` and one line per item that runs when imaging-assist loads the model
    (file, key, text); code in parts it never evaluates (training configs...) is counted, or
    listed too with ``everything``."""
    runs = [it for it in items if getattr(it, "runs", True)]
    rest = [it for it in items if not getattr(it, "runs", True)]
    out = [f"{indent}contains code:"]
    for it in runs + (rest if everything else []):
        text = " ".join(str(it.text).split())
        if len(text) > 160:
            text = text[:157] + "..."
        where = f"{it.file}: {it.key}" if it.key else str(it.file)
        note = "" if getattr(it, "runs", True) else "  (never run by imaging-assist)"
        out.append(f"{indent}  {where}: {text}{note}")
    if rest and not everything:
        out.append(f"{indent}  (and {len(rest)} item(s) in parts imaging-assist never runs, e.g. "
                   f"training configs: `imaging-assist models show {mid} --all` lists them)")
    return out


def _trust_state(e) -> str:
    if e.card is None:
        return "-"
    if not getattr(e, "contains_code", False):
        return "no code"
    return "code, trusted" if getattr(e, "trusted", False) else "code, NOT TRUSTED"


def _not_until_trusted(e) -> str:
    return f"it will not run until trusted: `imaging-assist models trust {e.id}`"


# =========================================================================== commands
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
            rows.append([e.id, "-", "-", "-", e.source, "-", "invalid"])
            continue
        rows.append([e.id + (" (shadowed)" if e.shadowed_by else ""), f"{c.task} {c.spatial_dims}D",
                     "/".join(c.modality) + (f" {c.body_part}" if c.body_part else ""), c.version,
                     e.source, _trust_state(e), ver])
    print(fmt_table(rows, ["ID", "TASK", "MODALITY", "VERSION", "SOURCE", "CODE", "VERIFIED"]))
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
            continue
        print(f"added {e.card.id} {e.card.version} ({e.card.task}, {'/'.join(e.card.modality)}) "
              f"from {e.folder}")
        # another model with the same id: say which one `--model ID` now runs
        same = [o for o in reg.entries() if o.card is not None and o.card.id == e.card.id
                and Path(o.folder).resolve() != Path(e.folder).resolve()]
        if same:
            used = next((o for o in reg.entries() if o.card is not None and o.card.id == e.card.id
                         and o.shadowed_by is None), None)
            mine = used is not None and Path(used.folder).resolve() == Path(e.folder).resolve()
            other = same[0]
            print(f"warning: model id {e.card.id} is also {other.source} model {other.card.version} in "
                  f"{other.folder}; `--model {e.card.id}` runs "
                  + ("the one just added" if mine else "that one (this one only by its folder path)"),
                  file=sys.stderr)
        items = _code_items(e)
        if items or getattr(e, "contains_code", False):
            print("\n".join(_code_lines(items, e.id)))
            if not getattr(e, "trusted", False):
                print(f"  {_not_until_trusted(e)}")
    return 0


def cmd_models_show(args) -> int:
    e = _registry().get(args.id)
    c = e.card
    # the code first: a config that cannot be read is the one error line, not half a summary
    items = _code_items(e) if getattr(e, "contains_code", False) else []
    print(f"{c.id} {c.version}: {c.name}")
    print(f"  task        {c.task}, {c.spatial_dims}D, labels {', '.join(c.labels)}")
    print(f"  for         {'/'.join(c.modality)}{' ' + c.body_part if c.body_part else ''}")
    print(f"  format      {c.format}")
    print(f"  folder      {e.folder} ({e.source})")
    print(f"  intended    {' '.join(str(c.intended_use).split())}")
    for w in c.weights:
        print(f"  weights     {w.file}  sha256 {getattr(w, 'sha256', None) or '-'}")
    print("  NOT FOR CLINICAL USE")
    if getattr(e, "contains_code", False):
        print("\n".join(_code_lines(items, e.id, everything=args.all)))
        if getattr(e, "trusted", False):
            print("  trusted: its code may run")
        else:
            print(f"  {_not_until_trusted(e)}")
    else:
        print("  code        none (no expressions or code objects in its configs)")
    return 0


def _confirm(question: str) -> bool:
    sys.stdout.write(question + " [y/N] ")
    sys.stdout.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def cmd_models_trust(args) -> int:
    from ..models import trust as _trust

    e = _registry().get(args.id)
    if not getattr(e, "contains_code", False):
        print(f"{e.id} contains no code: nothing to trust (it runs as it is)")
        return 0
    print(f"{e.id} ({e.folder})")
    # what is trusted is what was shown: the folder's hash before and after listing its code,
    # checked again when the trust is recorded
    shown = _trust.bundle_hash(e.folder)
    lines = _code_lines(_code_items(e), e.id)
    if _trust.bundle_hash(e.folder) != shown:
        raise UserError(f"{e.id}: the model folder {e.folder} changed while it was being listed; nothing was trusted")
    print("\n".join(lines))
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError(f"trusting {e.id} lets its code run as you: confirm with --yes "
                            "(not asking: this is not a terminal)")
        if not _confirm(f"Run this code whenever {e.id} is used?"):
            print("not trusted")
            return 1
    digest = _trust.trust(e.folder, expect=shown)
    print(f"trusted {e.id}: weights and configs sha256 {digest}")
    return 0


def cmd_models_untrust(args) -> int:
    from ..models import trust as _trust

    e = _registry().get(args.id)
    was = bool(getattr(e, "trusted", False))
    _trust.untrust(e.folder)
    print(f"{e.id}: {'trust withdrawn' if was else 'was not trusted'}; its code will not run")
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
                # ok with a message: a warning that does not fail the model (an older file without
                # the weights' sha256, an explanation check made with other weights)
                state = ("FAILED: " + v.message if not v.ok else f"ok ({v.algorithm})" if v.message == "ok"
                         else "warning: " + v.message)
                print(f"{e.id}: {v.file}: {state}")
        if not entries:
            print("no models to verify")
    return 1 if failed else 0
