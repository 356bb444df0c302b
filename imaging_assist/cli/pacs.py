"""``imaging-assist pacs nodes|add-node|remove-node|settings|echo|find|get|send``: query,
retrieve and send with a PACS over DIMSE (pynetdicom) or DICOMweb (dicomweb-client).

``--node`` takes a configured name, ``AET@host:port`` or an ``http(s)://`` DICOMweb base URL.
Passwords and tokens are read from stdin or an environment variable, never from the command
line (where ``ps`` would show them), and are never printed.  See docs/pacs.md.
"""

from __future__ import annotations

import os
import sys
import threading

from ..errors import UserError
from ..safe_text import printable  # values from the remote node and from files: no control sequences
from .common import fmt_table, int_at_least, print_json


def register(subparsers) -> None:
    p = subparsers.add_parser("pacs", help="query, retrieve and send with a PACS (DIMSE or DICOMweb)")
    sub = p.add_subparsers(dest="pacs_command", metavar="ACTION")
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])

    n = sub.add_parser("nodes", help="list the configured PACS nodes and our own AE settings")
    n.add_argument("--json", action="store_true")
    n.set_defaults(func=cmd_nodes)

    a = sub.add_parser("add-node", help="add or replace a configured node")
    a.add_argument("name", metavar="NAME")
    w = a.add_mutually_exclusive_group(required=True)
    w.add_argument("--dimse", metavar="AET@HOST:PORT", help="a DIMSE node")
    w.add_argument("--url", metavar="URL", help="a DICOMweb base URL (http:// or https://)")
    a.add_argument("--user", help="DICOMweb basic auth user (password from --password-stdin/-env)")
    a.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    a.add_argument("--password-env", metavar="VAR", help="take the password from this variable")
    a.add_argument("--token-stdin", action="store_true", help="read a bearer token from stdin")
    a.add_argument("--token-env", metavar="VAR", help="take a bearer token from this variable")
    a.add_argument("--tls-ca", metavar="PEM", help="DIMSE over TLS: CA certificate(s) of the node")
    a.add_argument("--tls-cert", metavar="PEM", help="DIMSE over TLS: our client certificate")
    a.add_argument("--tls-key", metavar="PEM", help="DIMSE over TLS: our client key")
    a.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds (30)")
    a.set_defaults(func=cmd_add_node)

    r = sub.add_parser("remove-node", help="remove a configured node")
    r.add_argument("name", metavar="NAME")
    r.set_defaults(func=cmd_remove_node)

    s = sub.add_parser("settings", help="show or set our own AE title and C-MOVE storage port")
    s.add_argument("--ae-title", metavar="AET")
    s.add_argument("--storage-port", type=int, metavar="PORT")
    s.set_defaults(func=cmd_settings)

    e = sub.add_parser("echo", help="C-ECHO (DIMSE) or a QIDO request (DICOMweb)")
    e.add_argument("--node", required=True, metavar="N")
    e.set_defaults(func=cmd_echo)

    f = sub.add_parser("find", help="C-FIND or QIDO-RS (wildcards * and ?; dates FROM-TO)")
    f.add_argument("--node", required=True, metavar="N")
    f.add_argument("--patient", default="", metavar="NAME")
    f.add_argument("--patient-id", default="", metavar="ID")
    f.add_argument("--birth-date", default="", metavar="D")
    f.add_argument("--date", default="", metavar="FROM-TO")
    f.add_argument("--modality", default="", metavar="M")
    f.add_argument("--accession", default="", metavar="A")
    f.add_argument("--description", default="", metavar="TEXT")
    f.add_argument("--study", default="", metavar="UID", help="only this study (series level)")
    f.add_argument("--level", choices=("study", "series"), default="study")
    f.add_argument("--limit", type=int_at_least(1), default=1000, metavar="N",
                   help="at most N matches (1000); more are cancelled and a note says so")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_find)

    g = sub.add_parser("get", help="retrieve a study (C-GET, else C-MOVE; WADO-RS for DICOMweb)")
    g.add_argument("study", metavar="STUDY_UID")
    g.add_argument("--node", required=True, metavar="N")
    g.add_argument("--series", action="append", default=[], metavar="UID", help="only this series "
                                                                              "(repeatable)")
    g.add_argument("--out", required=True, metavar="DIR")
    g.add_argument("--method", choices=("auto", "get", "move", "wado"), default="auto")
    g.add_argument("--json", action="store_true", help="print the transfer summary as JSON")
    g.set_defaults(func=cmd_get)

    d = sub.add_parser("send", help="C-STORE or STOW-RS files/folders, then confirm by a query")
    d.add_argument("paths", nargs="+", metavar="PATH")
    d.add_argument("--node", required=True, metavar="N")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_send)


def _secret(stdin: bool, env: str | None, what: str) -> str:
    if stdin:
        value = sys.stdin.readline().rstrip("\r\n")
    elif env:
        value = os.environ.get(env, "")
        if not value:
            raise UserError(f"environment variable {env} is empty or not set")
    else:
        return ""
    if not value:
        raise UserError(f"no {what} given on stdin")
    return value


def cmd_nodes(args) -> int:
    from ..pacs.nodes import config_path, load_settings
    s = load_settings()
    if args.json:
        print_json({"config": str(config_path()), "ae_title": s.ae_title,
                    "storage_port": s.storage_port,
                    "nodes": [n.public_dict() for n in s.nodes.values()]})
        return 0
    print(f"our AE title {s.ae_title}, C-MOVE storage port {s.storage_port} ({config_path()})")
    if not s.nodes:
        print("no nodes configured (imaging-assist pacs add-node NAME --dimse AET@HOST:PORT | --url URL)")
        return 0
    rows = [[n.name, "DIMSE" if n.is_dimse else "DICOMweb", n.display()] for n in s.nodes.values()]
    print(fmt_table(rows, ["name", "kind", "address"]))
    return 0


def cmd_add_node(args) -> int:
    from ..pacs.nodes import Node, add_node, parse_node
    if args.dimse:
        n = parse_node(args.dimse, settings=_empty())
        if not n.is_dimse:
            raise UserError(f"--dimse wants AET@HOST:PORT (got {args.dimse!r})")
        node = Node(args.name, "dimse", ae_title=n.ae_title, host=n.host, port=n.port,
                    tls_ca=args.tls_ca or "", tls_cert=args.tls_cert or "",
                    tls_key=args.tls_key or "", timeout=args.timeout)
    else:
        password = _secret(args.password_stdin, args.password_env, "password")
        token = _secret(args.token_stdin, args.token_env, "token")
        if password and token:
            raise UserError("give a password (basic auth) or a token (bearer), not both")
        if password and not args.user:
            raise UserError("a password needs --user")
        auth = "basic" if args.user else ("bearer" if token else "none")
        node = Node(args.name, "dicomweb", url=args.url, auth=auth, username=args.user or "",
                    password=password, token=token, timeout=args.timeout)
    path = add_node(node)
    print(f"saved node {node.label()} in {path} (mode 0600)")
    return 0


def _empty():
    from ..pacs.nodes import Settings
    return Settings()


def cmd_remove_node(args) -> int:
    from ..pacs.nodes import remove_node
    remove_node(args.name)
    print(f"removed node {args.name}")
    return 0


def cmd_settings(args) -> int:
    from ..pacs.nodes import update_settings
    s = update_settings(args.ae_title, args.storage_port)  # under the lock: no node of another process lost
    print(f"our AE title {s.ae_title}, C-MOVE storage port {s.storage_port}")
    return 0


def _node_and_settings(text: str):
    from ..pacs.nodes import load_settings, parse_node
    s = load_settings()
    return parse_node(text, s), s


def cmd_echo(args) -> int:
    from ..pacs import api
    node, s = _node_and_settings(args.node)
    t = api.echo(node, s)
    print(f"{node.label()}: {'C-ECHO' if node.is_dimse else 'QIDO-RS'} ok in {t * 1000:.0f} ms")
    return 0


def cmd_find(args) -> int:
    from ..pacs import api
    from ..pacs.query import Query
    node, s = _node_and_settings(args.node)
    q = Query(patient=args.patient, patient_id=args.patient_id, birth_date=args.birth_date,
              date=args.date, modality=args.modality, accession=args.accession,
              description=args.description, study_uid=args.study, level=args.level)
    rows = api.find(node, q, s, limit=args.limit)
    said = list(getattr(rows, "notes", ()) or ())  # how the answer was obtained (a node that
    for n in said:                                      # stopped early, a bounded broadened search)
        print(f"note: {n}", file=sys.stderr)
    if getattr(rows, "truncated", False) and not said:
        print(f"note: more than {args.limit} matches; showing the first {args.limit} "
              f"(narrow the filters or raise --limit)", file=sys.stderr)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no matches")
        return 0
    if args.level == "study":
        table = [[r["patient_name"], r["patient_id"], r["study_date"], r["study_description"],
                  r["modalities"], _n(r["n_series"]), _n(r["n_instances"]), r["study_uid"]]
                 for r in rows]
        print(fmt_table(table, ["patient", "id", "date", "description", "mod", "series",
                                "inst", "study uid"]))
    else:
        table = [[r["patient_name"], r["study_date"], r["modality"], _n(r["series_number"]),
                  r["series_description"], _n(r["n_instances"]), r["study_uid"], r["series_uid"]]
                 for r in rows]
        print(fmt_table(table, ["patient", "date", "mod", "no", "description", "inst",
                                "study uid", "series uid"]))
    print(f"{len(rows)} {'studies' if args.level == 'study' else 'series'}")
    return 0


def _n(v) -> str:
    return "-" if v is None else str(v)


def _run_cancellable(fn, cancel: threading.Event):
    """Run ``fn`` in a worker thread so that Ctrl-C sets ``cancel`` (a clean C-CANCEL /
    abort, temporary files removed) instead of tearing the transfer down mid-write."""
    box: dict = {}
    finished = threading.Event()  # not Thread.join: a join interrupted by Ctrl-C can leave
    # is_alive() False while the thread still runs (CPython bpo-21822)

    def work():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            box["error"] = e
        finally:
            finished.set()

    threading.Thread(target=work, name="pacs-transfer", daemon=True).start()
    interrupted = False
    while not finished.is_set():
        try:
            finished.wait(0.2)
        except KeyboardInterrupt:
            interrupted = True
            cancel.set()
            print("\ncancelling...", file=sys.stderr)
    if "error" in box:
        raise box["error"]
    return box.get("result"), interrupted


def cmd_get(args) -> int:
    from ..pacs import api
    from ..progress import progress_bar
    from ..outputs import out_folder
    node, s = _node_and_settings(args.node)
    out = out_folder(args.out)
    cancel = threading.Event()
    with progress_bar("Retrieving", unit="inst", enabled=not args.json) as bar:
        res, interrupted = _run_cancellable(
            lambda: api.get(node, args.study, out, series_uids=args.series,
                            method=args.method, settings=s,
                            progress=lambda d, t, _s: bar(d, t), cancel=cancel), cancel)
    for note in res.notes:
        print(printable(f"note: {note}"), file=sys.stderr)
    for f in res.failures:
        where = f" (series {f.series_instance_uid})" if f.series_instance_uid else ""
        print(printable(f"failed: {f.sop_instance_uid}{where}: {f.reason}"), file=sys.stderr)
    index = None
    if res.written or res.skipped:
        index = api.index_study(res)
    if args.json:
        out = res.to_dict()
        if index is not None:
            out["series"] = [{"uid": x.uid, "modality": x.modality, "description": x.description,
                              "instances": x.n_instances} for x in index.all_series()]
        print_json(out)
    else:
        how = {"get": "C-GET", "move": "C-MOVE", "wado": "WADO-RS"}[res.method]
        print(f"{res.written} instances retrieved by {how} in {res.seconds:.1f} s, "
              f"{res.skipped} already present, {len(res.failures)} failed: {res.study_dir}")
        if index is not None:
            for x in index.all_series():
                print(printable(f"  series {x.number if x.number is not None else '-'} {x.modality or '--'} "
                                f"{x.description or '(no description)'}: {x.n_instances} instances"))
            for pr in index.problems:
                print(printable(f"  problem: {pr.path}: {pr.reason}"))
    if res.cancelled or interrupted:
        print(f"cancelled: {res.written} instances kept, no partial file left; run the same "
              f"command again to fetch the rest", file=sys.stderr)
        return 130
    return 1 if res.failures else 0


def cmd_send(args) -> int:
    from ..pacs import send as sendmod
    from ..progress import progress_bar
    node, s = _node_and_settings(args.node)
    cancel = threading.Event()
    with progress_bar("Sending", unit="inst", enabled=not args.json) as bar:
        res, interrupted = _run_cancellable(
            lambda: sendmod.send(node, args.paths, settings=s, progress=bar, cancel=cancel), cancel)
    for p, r in res.skipped:
        print(printable(f"skipped: {p}: {r}"), file=sys.stderr)
    for p, r in res.failures:
        print(printable(f"failed: {p}: {r}"), file=sys.stderr)
    for p, r in res.warnings:
        print(printable(f"warning: {p}: {r}"), file=sys.stderr)
    if res.unconfirmed:
        print(f"warning: {res.unconfirmed} instances accepted by the node but not confirmed: the "
              f"read-back query failed ({res.readback_error})", file=sys.stderr)
    if args.json:
        print_json(res.to_dict())
    else:
        print(f"{res.confirmed} instances sent to {node.label()} and confirmed by a query, "
              f"{res.unconfirmed} sent but not confirmed, {len(res.failures)} failed, "
              f"{len(res.skipped)} skipped ({res.seconds:.1f} s)")
    if res.cancelled or interrupted:
        print("cancelled", file=sys.stderr)
        return 130
    return 1 if res.failures or res.unconfirmed else 0
