"""The batch driver: sources -> items -> engine -> results table (``imaging-assist batch``).

:func:`run_batch` expands the SOURCEs (:mod:`.sources`), hashes each item, leaves out what
the table already holds for the same content hash and model version (resume), runs the rest
through the chosen engine (:mod:`.engines`) and commits each row as it arrives
(:mod:`.table`).  Files the scanner cannot read and items that fail are failed rows with
their reason; the batch goes on.  Ctrl-C stops after the rows already finished: the table
stays consistent (each row is one transaction), the run is marked ``interrupted``, and the
same command resumes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import sys
import time
from pathlib import Path

from ..errors import UserError
from ..privacy.sitekey import text_bytes
from .item import Settings, requested_outputs
from .pacs_source import is_pacs_source, retrieve
from .sources import collect, hash_all
from .table import ResultsTable, db_text


def _echo(msg: str) -> None:
    print(msg, file=sys.stderr)


def run_batch(sources: list[str], model_ids: list[str], settings: Settings, engine: str = "local",
              address: str | None = None, command: str = "", echo=_echo, progress: bool = True,
              decoders: int = 2, depth: int = 4, chunk: int = 16, actors: int | None = None,
              processes: int = 0) -> dict:
    """Run the batch; returns counts {ok, failed, skipped, resumed, total, seconds, state,
    items_per_s, table}.  Raises ``UserError`` for a bad command line (unknown model, no
    such SOURCE, OUT inside a SOURCE) and when another batch is writing to OUT (:func:`_out_lock`)."""
    from ..models.registry import Registry
    from ..outputs import out_folder

    if engine not in ("local", "ray"):
        raise UserError(f"unknown engine {engine!r} (local or ray)")
    if engine == "ray":
        from .engines import RAY_MISSING, ray_available

        if not ray_available():
            raise UserError(RAY_MISSING)
    cards, folders = resolve_models(model_ids, Registry())
    ids = [c.id for c in cards]
    versions = {c.id: str(c.version) for c in cards}
    if settings.explain_labels:
        for c in cards:
            unknown = [lab for lab in settings.explain_labels if lab not in c.labels]
            if unknown:
                raise UserError(f"unknown label(s) {', '.join(map(repr, unknown))} for model {c.id} "
                                f"(labels: {', '.join(c.labels)})")
    # the table's paths are absolute; the output folder is refused inside a SOURCE folder before
    # it is created (the batch would read its own outputs, and leave an empty folder there)
    out = Path(os.path.abspath(out_folder(settings.out_dir, sources=[s for s in sources if not is_pacs_source(s)])))
    with _out_lock(out, echo):  # one batch per OUT at a time (before anything is written there)
        return _run_in(out, sources, cards, folders, ids, versions, settings, engine, address, command, echo,
                       progress, decoders, depth, chunk, actors, processes)


LOCK_NAME = ".batch.lock"  # a dot file: never read as an input (sources.py and the scanner skip them)


@contextlib.contextmanager
def _out_lock(out: Path, echo):
    """Hold an exclusive ``flock`` on OUT/.batch.lock for the whole run, or refuse at once
    (UserError, exit 2): two batches writing to one OUT each ran every item (the table's resume
    only sees rows already committed), doubling the compute, the prediction log's runs and the
    audit events.  The holder writes its pid in the file, for the refusal to name.  The lock
    goes with the process (a crash leaves nothing to clean up); the file stays.  A file system
    without flock (some network mounts) runs unlocked, said in a note."""
    path = out / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise UserError(f"cannot create the lock file {path}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                echo(f"note: {out} cannot be locked ({e.strerror or e}): do not run two batches into it at once")
            else:
                pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                raise UserError(f"another batch is writing to {out} (pid {pid if pid.isdigit() else '?'}?): "
                                "wait for it or choose another --out") from None
        else:
            with contextlib.suppress(OSError):  # the pid only helps the message (a full disk: "pid ?")
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _run_in(out: Path, sources: list[str], cards, folders, ids, versions, settings: Settings, engine, address,
            command, echo, progress, decoders, depth, chunk, actors, processes) -> dict:
    """:func:`run_batch` once this process holds OUT's lock."""
    # absolute SOURCEs: the table names files wherever the command ran from, and one folder
    # named twice (relative and absolute) is one set of items
    sources = [s if is_pacs_source(s) else os.path.abspath(os.path.expanduser(s)) for s in sources]
    sources = list(dict.fromkeys(sources))
    pacs_notes: list[str] = []
    if any(is_pacs_source(s) for s in sources):  # retrieved first, then an ordinary folder
        local = []
        for s in sources:
            if is_pacs_source(s):
                folder, got = retrieve(s, str(out / "pacs-cache"), echo=echo)
                local.append(folder)
                pacs_notes += got
            else:
                local.append(s)
        sources = list(dict.fromkeys(local))
    settings.out_dir = str(out)
    if settings.device != "auto":
        from ..inference.device import resolve_device

        resolve_device(settings.device)

    t_start = time.perf_counter()
    cands, notes, problems = collect(sources, cards, override=settings.override)
    unreadable = hash_all(cands)
    t_scan = time.perf_counter() - t_start
    table = ResultsTable(out)
    run_id = table.start_run(engine, command)
    bad = {id(c) for c, _ in unreadable}
    # the same content under several names (copies, or one file reached through two SOURCEs)
    # is one work unit: run once into one folder, the other names in its row's other_sources
    groups = merge_duplicates([c for c in cands if id(c) not in bad], ids)
    n_dup = sum(len(g) - 1 for g in groups)
    others = {g[0].content_hash: [o.source for o in g[1:]] for g in groups if len(g) > 1}
    failed_before = table.failed_sources()
    clear: dict = {}  # content hash -> (sources, files) whose earlier failed rows an ok row clears
    asked = requested_outputs(settings)
    units = []
    rerun: dict[str, int] = {}
    counts = {"ok": 0, "failed": 0, "skipped": 0, "resumed": 0}
    for n in pacs_notes + notes:
        echo(f"note: {n}")

    def put(row: dict) -> None:
        row["engine"] = engine
        row["run_id"] = run_id
        if row.get("model") and others.get(row.get("content_hash")):
            row["other_sources"] = others[row["content_hash"]]
        table.put(row)
        if row["status"] == "ok" and row["content_hash"] in clear:
            names, files = clear[row["content_hash"]]
            table.clear_failed(names, row["model"], row["content_hash"], files)
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        if row["status"] == "failed":
            err, src = str(row.get("error")), str(row.get("source"))
            echo(f"error: {err}" if err.startswith(src) else f"error: {src}: {err}")

    for path, reason in problems:  # files the scanner could not read: no model can take them
        content_hash, not_a_file = _file_hash(path)
        put({"content_hash": content_hash, "model": "", "model_version": "", "status": "failed",
             "error": not_a_file or reason, "kind": "file", "source": path})
    for c, reason in unreadable:
        for m in c.models:
            put({"content_hash": "unreadable:" + hashlib.sha256(text_bytes(c.key)).hexdigest(), "model": m,
                 "model_version": versions[m], "status": "failed", "error": reason, "kind": c.kind,
                 "source": c.source, "stem": c.stem})
    for g in groups:
        c = g[0]
        todo = []
        for m in (m for m in ids if m in c.models):
            why = rerun_reason(table.lookup(c.content_hash, m, versions[m]), asked)
            if why is None:
                counts["resumed"] += 1
                if len(g) > 1:
                    table.add_sources(c.content_hash, m, versions[m], [o.source for o in g])
                continue
            todo.append(m)
            if why:
                rerun[why] = rerun.get(why, 0) + 1
        if todo:
            units.append((c, todo))
            names = [o.source for o in g]
            files = [f for o in g if o.kind != "slide" for f, member in o.files() if member is None]
            hit = failed_before & set(db_text(names + files))  # the table's form of the names
            if hit:
                clear[c.content_hash] = (names, sorted(hit))
    total = sum(len(u[1]) for u in units)
    if not cands and not problems:
        table.end_run(run_id, "nothing to do", counts, 0.0)
        table.close()
        raise UserError(f"nothing in {', '.join(sources)} matches model(s) {', '.join(ids)}"
                        + (f": {'; '.join(notes[:3])}" if notes else ""))
    if n_dup:
        echo(f"note: {n_dup} item(s) are duplicates of other items (the same content under another name): "
             "each content is analysed once; its row names the other names in other_sources")
    if rerun:
        echo("note: " + "; ".join(f"{n} done item(s) run again: {why}" for why, n in rerun.items()))
    echo(f"{len(cands)} item(s) found in {t_scan:.1f} s"
         + (f" ({n_dup} duplicate(s) of other items)" if n_dup else "")
         + f"; {counts['resumed']} already done (same content and model version), {total} to run "
           f"with --engine {engine}")
    from tqdm import tqdm

    bar = tqdm(total=total, desc="batch", unit="item", file=sys.stderr, dynamic_ncols=True,
               disable=not progress or not sys.stderr.isatty() or not total)
    t0 = time.perf_counter()
    t_first = None
    state = "finished"
    gen = None
    last_line = t0
    try:
        if units:
            if engine == "local":
                from .engines import processes_for, run_local, run_local_processes, work_items

                n_proc = processes_for(work_items(units), processes, settings.device, echo=echo)
                if n_proc > 1:
                    echo(f"{n_proc} worker processes (one model each)")
                    gen = run_local_processes(units, folders, settings, n_proc)
                else:
                    gen = run_local(units, folders, settings, decoders=decoders, depth=depth)
            else:
                from .engines import run_ray

                gen = run_ray(units, folders, settings, address=address, chunk=chunk, actors=actors,
                              depth=depth, on_start=echo)
            done = 0
            for row in gen:
                put(row)
                done += 1
                if done == 1:
                    t_first = time.perf_counter()
                bar.update(1)
                now = time.perf_counter()
                if bar.disable and progress and now - last_line > 30:  # no terminal: a line now and then
                    rate = done / (now - t0)
                    echo(f"{done}/{total} items, {rate:.1f} items/s, ETA {(total - done) / rate:.0f} s")
                    last_line = now
    except KeyboardInterrupt:
        state = "interrupted"
    finally:
        if gen is not None:
            try:
                gen.close()
            except KeyboardInterrupt:  # a second Ctrl-C during cleanup: the rows are committed
                state = "interrupted"
        bar.close()
        seconds = time.perf_counter() - t0
        failing = sys.exc_info()[0] is not None
        if state != "interrupted" and failing:
            state = "failed"
        try:
            table.end_run(run_id, state, counts, seconds)
        except UserError:  # e.g. the disk is full: the error that stopped the run is the one to tell
            if not failing:
                raise
        finally:
            table.close()
    ran = counts["ok"] + counts["failed"] + counts["skipped"]
    result = dict(counts, total=total, duplicates=n_dup, rerun=sum(rerun.values()), seconds=round(seconds, 3),
                  state=state, run_id=run_id,
                  items_per_s=round(ran / seconds, 3) if seconds > 0 else None,
                  table=str(out / "batch.sqlite"), scan_s=round(t_scan, 3))
    # start-up (models, Ray) until the first row, and the rate after it
    if t_first is not None:
        result["first_row_s"] = round(t_first - t0, 3)
        if ran > 1 and t0 + seconds > t_first:
            result["steady_items_per_s"] = round((ran - 1) / (t0 + seconds - t_first), 3)
    return result


def resolve_models(args: list[str], registry) -> tuple[list, list[str]]:
    """(cards, model folders) of the --model arguments, each resolved once (an id through the
    registry, a folder as it is): the engines load exactly these folders, so the card matched
    and checked for resume, the version recorded and the network run are one model.  The same
    model named twice (id and folder, or two spellings) counts once; two different folders of
    one model id are a ``UserError``."""
    seen: dict[str, tuple[str, object, str]] = {}
    for a in args:
        e = registry.get(a)
        folder = os.path.realpath(e.folder)
        prev = seen.get(e.card.id)
        if prev is None:
            seen[e.card.id] = (folder, e.card, a)
        elif prev[0] != folder:
            raise UserError(f"--model {prev[2]} and --model {a} are both model {e.card.id} but different "
                            f"folders ({prev[0]}, {folder}): give one of them")
    return [v[1] for v in seen.values()], [v[0] for v in seen.values()]


def merge_duplicates(cands: list, ids: list[str]) -> list[list]:
    """Candidates grouped by content hash, in the order found: the first of each group is
    the work unit, with the models of all of them (the same bytes fit the same cards)."""
    groups: dict[str, list] = {}
    for c in cands:
        groups.setdefault(c.content_hash, []).append(c)
    for g in groups.values():
        first = g[0]
        for o in g[1:]:
            for m in o.models:
                if m not in first.models:
                    first.models.append(m)
                if m in o.overridden:
                    first.overridden.setdefault(m, o.overridden[m])
                if m in o.match_warnings:
                    first.match_warnings.setdefault(m, o.match_warnings[m])
        first.models.sort(key=lambda m: ids.index(m) if m in ids else len(ids))
    return list(groups.values())


def rerun_reason(row: dict | None, asked: dict) -> str | None:
    """Whether an item (content, model, version) runs: None when its row is done for what this
    command asks; "" when it has no row or a failed one; else why a done row runs again (a
    skipped row with --research-override, an ok row made without an output now asked)."""
    if row is None or row.get("status") not in ("ok", "skipped"):
        return ""
    if row["status"] == "skipped":
        return "skipped before, --research-override now given" if asked.get("override") else None
    had = row.get("outputs")
    if not isinstance(had, dict):  # a row of an older batch: what it made, not what was asked
        had = {"report": row.get("report") is not None or row.get("report_error") is not None,
               "dicom": row.get("dicom") is not None or row.get("dicom_error") is not None,
               "explain": None, "explain_labels": None}
    missing = [f for f, k in (("--report", "report"), ("--dicom", "dicom")) if asked.get(k) and not had.get(k)]
    if asked.get("explain") and (had.get("explain"), had.get("explain_labels")) != (asked["explain"],
                                                                                    asked.get("explain_labels")):
        missing.append("--explain " + asked["explain"] + (" --label " + " --label ".join(asked["explain_labels"])
                                                           if asked.get("explain_labels") else ""))
    return f"made without {', '.join(missing)}" if missing else None


def _file_hash(path: str) -> tuple[str, str | None]:
    """(content hash, why it is no file) of a path the scanner could not read.  Only a regular file
    is read (opened without blocking): a named pipe would wait for a writer and a device (/dev/zero)
    never ends, so anything else is hashed by its path and kind, and named: "not a regular file
    (named pipe)" (the walk took it for a folder it could not read)."""
    from ..dicom.header import HeaderError, file_kind, open_regular

    h = hashlib.sha256(b"file")
    try:
        with open_regular(path) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest(), None
    except (HeaderError, OSError):
        h.update(text_bytes(os.path.abspath(path)))  # a name that is not UTF-8 too
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return h.hexdigest(), None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):  # unreadable: the scanner's reason says why
        return h.hexdigest(), None
    h.update(b"\0" + file_kind(mode).encode())
    return h.hexdigest(), f"not a regular file ({file_kind(mode)})"
