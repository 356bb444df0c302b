"""The audit trail: who opened, ran, exported, de-identified or sent what, in a log nobody
can edit silently (no Qt).

Each event is one JSON line appended to ``data_dir()/audit/audit.jsonl``::

    {"seq": 7, "time": "2026-12-04T23:41:07.123456+00:00", "user": "alice", "host": "ws12",
     "pid": 4242, "app": "0.1.0", "event": "model.run", "fields": {...}, "key": "d853a01c826db203",
     "prev": "<sha256 of line 6>", "mac": "<HMAC-SHA256 of this line without its mac>"}

* **Hash chain**: ``prev`` is the sha256 of the previous line's bytes (line 1: :data:`GENESIS`),
  ``seq`` its line number.  An edited, deleted, inserted or reordered line breaks the chain
  at the first line that no longer follows its predecessor.
* **Parts**: at :data:`ROTATE_BYTES` the live log is renamed to a read-only part
  ``audit.<first>-<last>.jsonl`` (:func:`parts`); the next line chains on from the part's last
  line, and line numbers run over the whole trail.  Parts may be gzipped in place; reading and
  ``verify`` take them in order, so a deleted, cut or edited part breaks the chain like a line.
* **Seal**: ``mac`` is an HMAC-SHA256 of the line (without the mac) under a key derived from the
  site key (:mod:`.sitekey`), so a line forged or re-chained by someone without the key is
  found; ``key`` is the site key's fingerprint, to tell "sealed with another key" from "altered".
* **Tail truncation**: a chain alone cannot tell a log cut after line n from one that only had
  n lines.  After each append a small sealed head record ``audit.head.json`` keeps the line
  count and the last line's sha256; ``verify`` reports a log shorter than the head says, or a
  last sealed line that differs.  Limits (said honestly in docs/privacy.md): whoever holds the
  site key (the same OS account, since the key lives in its config folder) can rewrite the
  whole log and head consistently, and replacing log *and* head with an older copy of both is
  not detectable locally; only an anchor kept elsewhere helps there (``audit verify`` prints the
  head ``n:sha256`` to note down; ``--anchor`` checks such a note).
  The next append never re-seals over such damage: it reads the head first (under the lock),
  and when the log is shorter than the head says, ends in another line, or the head is missing
  or damaged while the trail has lines, the trail records that first (``audit.tail_missing``
  with the old head's count and sha256, ``audit.head_missing``); ``verify`` reports such a line
  as a break for good (exit 2), naming the lines lost, and still checks the rest after it.
  A torn last line the head had already counted was cut, not torn by a crash (lines are
  fsynced before the head is written): it is set aside and recorded as part of
  ``audit.tail_missing``, not as ``audit.recovered``.
* **Identifiers**: patient IDs and names, UIDs and paths never go in clear: fields named like
  them are keyed pseudonyms (HMAC with the site key, role ``audit:<kind>``, so they cannot be
  linked to the pseudonyms a de-identified export carries).
* **Concurrency and crashes**: appends hold an exclusive ``fcntl.flock`` on ``audit.lock``
  (processes and threads), write the whole line with one ``write`` on an ``O_APPEND`` file and
  ``fsync`` it; a short write is cut back.  A line left incomplete by a power loss is cut off
  by the next append, which records an ``audit.recovered`` event with the fragment's sha256
  (copied aside first; if the append then fails, e.g. on a full disk, the fragment is put back
  in the log and the copy removed, so failed tries leave no stray files).  Readers (``verify``,
  ``iter_entries``) take the same lock only to list and open the files (:class:`_Snapshot`), then
  read what they opened: a part closed meanwhile is never taken for deleted lines.
* **Grouped appends** (:func:`grouped`): the batch engines hold a chunk's events in memory and
  append them with one lock and one ``fsync`` when the chunk ends (each event keeps the time it
  happened); the chunk's rows reach the results table only after that, so a row in the table
  always has its lines in the trail.  Before the chunk starts, one ``batch.chunk`` line per 16
  inputs is written at once (:func:`record_ahead`): a worker killed outright mid-chunk loses its
  held events, never the record of what it read.
* **Never raises into the caller**: :func:`record` returns False and logs one warning line
  (``imaging_assist.audit`` logger; stderr when nothing else is configured).  Why: the trail
  must never stop a reader from seeing a study or finishing a run (a viewer that refuses to
  show images because the log disk is full harms patients more than a gap in a log); the gap
  is not silent, the warning says why it happened.  Sites that need fail-closed behaviour
  can check ``record``'s return value or ``audit verify`` from their monitoring.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import getpass
import hashlib
import hmac
import json
import logging
import math
import os
import re
import socket
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from ..userdirs import data_dir

LOG_NAME = "audit.jsonl"
HEAD_NAME = "audit.head.json"
LOCK_NAME = "audit.lock"
GENESIS = hashlib.sha256(b"imaging-assist audit trail v1 genesis").hexdigest()
LOCK_TIMEOUT_S = 5.0
MAX_LIST = 16  # longer identifier lists are recorded as one keyed digest of the set, plus a count
MAX_FIELDS_BYTES = 64 * 1024  # larger fields are recorded as their sha256 and size (lines stay small)
MAX_FRAGMENT = 16 * 1024 * 1024  # an interrupted tail up to this size is set aside by the next append
MAX_LINE = 1024 * 1024  # our lines stay under ~70 KiB; longer ones are not ours (bounded reads)
TAIL_CHUNK = 65536
# The live log is closed as a numbered, read-only part when it reaches this size (about 40,000
# batch items at ~1.6 KiB each), so no file grows without bound and old parts can be compressed
# (``gzip``: verify reads .gz parts) or copied to an archive; the chain runs on across parts.
# A site (or a test) sets another size with IMAGING_ASSIST_AUDIT_ROTATE_BYTES.
ROTATE_BYTES = 64 * 1024 * 1024
_PART_RE = re.compile(r"^audit\.(\d{10})-(\d{10})\.jsonl(\.gz)?$")

log = logging.getLogger("imaging_assist.audit")
_MAC_RE = re.compile(rb',"mac":"([0-9a-f]{64})"\}$')
_thread_lock = threading.Lock()
_warned: set[str] = set()

# Field names whose values identify a patient, a study/instance or a place on disk: recorded
# as keyed pseudonyms only.  Names ending in _uid/_uids, _path/_paths, _dir are covered too.
_KINDS = {"patient_id": "patient-id", "patient_name": "patient-name", "patient_ids": "patient-id",
          "accession_number": "accession", "other_patient_ids": "patient-id",
          "patient_birth_date": "birth-date", "uid": "uid", "uids": "uid",
          "path": "path", "paths": "path", "source": "path", "sources": "path",
          "output": "path", "outputs": "path", "dest": "path", "destination": "path"}


def audit_dir() -> Path:
    return data_dir() / "audit"


def log_path() -> Path:
    """The audit log (``data_dir()/audit/audit.jsonl``)."""
    return audit_dir() / LOG_NAME


def head_path() -> Path:
    return audit_dir() / HEAD_NAME


def _rotate_bytes() -> int:
    try:
        return max(4096, int(os.environ.get("IMAGING_ASSIST_AUDIT_ROTATE_BYTES", ROTATE_BYTES)))
    except ValueError:
        return ROTATE_BYTES


def part_name(first: int, last: int) -> str:
    return f"audit.{first:010d}-{last:010d}.jsonl"


def parts(folder: Path | None = None) -> list[tuple[int, int, Path]]:
    """The closed parts of the trail, oldest first: (first record, last record, file).  A part
    present both plain and gzipped (compression interrupted) counts once, as the plain file."""
    folder = Path(folder) if folder is not None else audit_dir()
    found: dict[tuple[int, int], Path] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    for name in names:
        m = _PART_RE.match(name)
        if m:
            key = (int(m.group(1)), int(m.group(2)))
            if key not in found or not m.group(3):
                found[key] = folder / name
    return [(a, b, found[(a, b)]) for a, b in sorted(found)]


def _open_part(path: Path):
    import gzip

    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _part_tail(path: Path) -> bytes | None:
    """The last complete line of a closed part (a .gz part is read through)."""
    if not path.name.endswith(".gz"):
        fd = os.open(path, os.O_RDONLY)
        try:
            return _last_line(fd, os.fstat(fd).st_size)[0]
        finally:
            os.close(fd)
    last = None
    for raw, state in _lines(path):
        if state == "ok":
            last = raw
    return last


# --------------------------------------------------------------------------- identifiers
def _kind_of(name: str) -> str | None:
    if name in _KINDS:
        return _KINDS[name]
    if name.endswith(("_uid", "_uids")):
        return "uid"
    if name.endswith(("_path", "_paths", "_dir")):
        return "path"
    return None


def pseudonym(value: Any, kind: str) -> str | None:
    """The audit pseudonym of ``value`` in role ``kind`` (None for an empty value).  Auditors
    recompute it with the same key to find a patient's or study's events
    (``audit show --patient ID`` / ``--uid UID``)."""
    from .sitekey import pseudonym as _p

    if value is None:
        return None
    s = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if not s.strip():
        return None
    return _p(s, "audit:" + kind)


def patient_pseudonyms(patient_id: str, issuer: str = "") -> list[str]:
    """Every audit pseudonym a patient's events may carry: that of the Patient ID itself, and
    that of the Patient ID a de-identified copy made with this site key gives the patient
    (``analyze``/``batch --deidentify`` open, run and export the copy, so their events name the
    copy's ``IA-…`` pseudonym; :func:`.deid.patient_key`, :meth:`.uids.Keyed.patient_id`).
    ``issuer``: the Issuer of Patient ID, when the files carry one."""
    from .deid import patient_key
    from .sitekey import site_key
    from .uids import Keyed

    own = pseudonym(patient_id, "patient-id")
    if own is None:
        return []
    deid = Keyed(site_key()).patient_id(patient_key({"PatientID": str(patient_id),
                                                     "IssuerOfPatientID": issuer or ""}))
    return [own, pseudonym(deid, "patient-id")]


def uid_pseudonyms(uid: str) -> list[str]:
    """The audit pseudonyms of a study/series/instance UID and of the UID a de-identified copy
    made with this site key gives it (:meth:`.uids.Keyed.uid`)."""
    from .sitekey import site_key
    from .uids import Keyed

    own = pseudonym(uid, "uid")
    if own is None:
        return []
    return [own, pseudonym(Keyed(site_key()).uid(str(uid)), "uid")]


def _pseudonymise(name: str, value: Any) -> Any:
    kind = _kind_of(name)
    if isinstance(value, dict):
        return {str(k): _pseudonymise(str(k), v) for k, v in value.items()}
    if kind is None:
        if isinstance(value, (list, tuple, set, frozenset)):
            return [_plain(v) for v in value]
        return _plain(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        vals = [v for v in value if v is not None and str(v).strip()]
        if len(vals) > MAX_LIST:  # keep lines short: the set as one keyed digest and its size
            joined = "\n".join(sorted({str(v).strip() for v in vals}))
            return {"count": len(vals), "set": pseudonym(joined, kind + "-set")}
        return [pseudonym(v, kind) for v in vals]
    return pseudonym(value, kind)


def _plain(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; the record keeps what it was
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, dict):
        return {str(k): _pseudonymise(str(k), x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    try:
        import numpy as np

        if isinstance(v, np.generic):
            return _plain(v.item())
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    return str(v)


# --------------------------------------------------------------------------- writing
def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (container without passwd entry)
        return f"uid{os.getuid()}"


def _mac_key(site_key: bytes) -> bytes:
    return hmac.new(site_key, b"imaging-assist audit seal v1", hashlib.sha256).digest()


def _seal(body: bytes, mkey: bytes) -> bytes:
    """The line: ``body`` (a JSON object) with its mac as the last member."""
    mac = hmac.new(mkey, body, hashlib.sha256).hexdigest()
    return body[:-1] + b',"mac":"' + mac.encode() + b'"}'


def _warn(reason: str) -> None:
    if reason not in _warned:  # one line per distinct reason and process, not one per event
        _warned.add(reason)
        log.warning("audit trail: %s", reason)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


_held: list | None = None  # events waiting for the end of a grouped() block in this process
_held_lock = threading.Lock()


def record(event: str, /, **fields) -> bool:
    """Append one event to the audit trail; True when it was written (or, inside
    :func:`grouped`, taken to be written when the block ends).

    Fields named like identifiers (``patient_id``, ``*_uid``, ``path``...) are pseudonymised.
    Never raises: a failed write is one warning line and False (see the module docstring)."""
    ev = (str(event), dict(fields), _now())
    with _held_lock:
        if _held is not None:
            _held.append(ev)
            return True
    return _write([ev])


def record_ahead(event: str, fields_list: list[dict]) -> bool:
    """Append one ``event`` per dict of ``fields_list`` at once, with one ``fsync``, even inside
    :func:`grouped`: for what must be in the trail before the work it announces.  A batch chunk
    names its inputs this way before opening them, so a worker killed outright (SIGKILL, power
    loss), whose held events are lost, still leaves every input it read in the trail.
    Never raises (as :func:`record`)."""
    now = _now()
    return _write([(str(event), dict(f), now) for f in fields_list]) if fields_list else True


def _why(e: BaseException) -> str:
    return getattr(e, "strerror", None) or (str(e).strip().splitlines() or [type(e).__name__])[0]


def _write(events: list) -> bool:
    try:
        return not _append(events)
    except Exception as e:  # noqa: BLE001 - the caller's work goes on; the gap is logged
        names = sorted({ev[0] for ev in events})
        _warn(f"event{'s' if len(events) > 1 else ''} {', '.join(map(repr, names))} not recorded ({_why(e)})")
        return False


@contextlib.contextmanager
def grouped():
    """Hold every event this process records inside the block and append them together when it
    ends: one lock, one write, one ``fsync``.  The batch engines wrap each chunk of items in it
    (two events per item, each append ~1.6 ms of which the ``fsync`` ~0.8 ms, measured with
    cProfile on this machine; a chunk of 8 films then costs one append instead of 16).  Events
    keep the time they happened and their order.  A block inside another adds to the outer one.
    A batch worker stopped with SIGTERM appends them first (:func:`flush_held_now`, installed by
    ``batch.engines.flush_audit_on_sigterm``); one killed outright (SIGKILL, power loss) loses
    them, but the ``batch.chunk`` events the engines write ahead (:func:`record_ahead`) still name
    every input of the chunk.  The engines return a chunk's rows to the results table only after
    the block ended, so such items are not marked done, and a re-run does (and records) them again."""
    global _held
    with _held_lock:
        outer = _held is not None
        if not outer:
            _held = []
    if outer:
        yield
        return
    try:
        yield
    finally:
        with _held_lock:
            events, _held = _held, None
        if events:
            _write(events)


def flush_held_now() -> None:
    """Append the events a :func:`grouped` block holds, at once: for a worker's SIGTERM handler
    (the batch engines stop worker processes with SIGTERM on Ctrl-C), so a chunk cut short
    still leaves its model runs in the trail.  Never waits on this process's own locks (the
    handler may have interrupted an append in progress: then the held events are lost, and
    said in one warning line); the file lock is waited for as always (at most LOCK_TIMEOUT_S)."""
    global _held
    if not _held_lock.acquire(blocking=False):
        _warn("events held for a grouped append were lost (stopped while recording)")
        return
    try:
        events, _held = _held, None
    finally:
        _held_lock.release()
    if not events:
        return
    if not _thread_lock.acquire(blocking=False):
        _warn(f"{len(events)} events held for a grouped append were lost (stopped while appending)")
        return
    try:
        _append(events, thread_locked=True)  # (an event it cannot record is a warning line of its own)
    except Exception as e:  # noqa: BLE001 - same as record(): one warning line
        _warn(f"{len(events)} events not recorded at stop ({type(e).__name__}: {e})")
    finally:
        _thread_lock.release()


class _Locked:
    """An exclusive flock on ``audit.lock``, waiting at most LOCK_TIMEOUT_S (never a hang).
    ``reader``: for :class:`_Snapshot`; a lock file that is missing and cannot be made (no
    audit folder, a read-only copy of a trail) is no lock at all, since nothing can append there."""

    def __init__(self, folder: Path, reader: bool = False):
        self.path = folder / LOCK_NAME
        self.reader = reader
        self.fd = -1

    def __enter__(self):
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            if not self.reader:
                raise
            try:  # flock works on a read-only descriptor too
                self.fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                self.fd = -1
                return self
        end = time.monotonic() + LOCK_TIMEOUT_S
        # a holder keeps the lock for one append (about 0.5 ms with its fsync): wait 0.1 ms
        # first, doubling to 2 ms (a flat 2 ms left two batch workers idle 7% of the time)
        delay = 0.0001
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) or time.monotonic() > end:
                    os.close(self.fd)
                    raise OSError(e.errno, f"audit lock {self.path} busy for {LOCK_TIMEOUT_S:.0f} s") from None
                time.sleep(delay)
                delay = min(2 * delay, 0.002)

    def __exit__(self, *exc):
        if self.fd < 0:
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = -1


def _last_line(fd: int, size: int) -> tuple[bytes | None, int]:
    """(the last complete line without its newline, or None; offset just past it).  A final
    fragment without a newline (an interrupted write) is not a line: the offset excludes it."""
    if size == 0:
        return None, 0
    pos = size
    buf = b""
    while pos > 0:
        if size - pos > MAX_FRAGMENT + MAX_LINE:  # bounded: never read a whole odd file into memory
            raise OSError(errno.EINVAL, "the end of the log is not made of audit lines (no complete "
                                        "line in its last 17 MiB); left untouched (run `audit verify`)")
        step = min(TAIL_CHUNK, pos)
        pos -= step
        buf = os.pread(fd, step, pos) + buf
        nl_end = buf.rfind(b"\n")
        if nl_end < 0:
            continue
        end = pos + nl_end + 1  # just past the last newline
        start_nl = buf.rfind(b"\n", 0, nl_end)
        if start_nl >= 0:
            return buf[start_nl + 1:nl_end], end
        if pos == 0:
            return buf[:nl_end], end
        # the last line is longer than what was read: read further back
    return None, 0


def _count_lines(fd: int, upto: int) -> int:
    n, off = 0, 0
    while off < upto:
        chunk = os.pread(fd, min(1 << 20, upto - off), off)
        if not chunk:
            break
        n += chunk.count(b"\n")
        off += len(chunk)
    return n


def _prepared(events: list[tuple[str, dict, str]]) -> tuple[list, list[str]]:
    """(the events with their fields pseudonymised and checked to make a line, the names of those
    that cannot be recorded): one event that fails (a field no JSON holds, say) is left out and
    named in a warning line, and the others of a group are still written."""
    out, failed = [], []
    for ev, f, t in events:
        try:
            fields = {str(k): _pseudonymise(str(k), v) for k, v in f.items()}
            json.dumps(fields, ensure_ascii=True, allow_nan=False, default=str)
        except Exception as e:  # noqa: BLE001 - the rest of the group is recorded all the same
            failed.append((ev, f"{type(e).__name__}: {_why(e)}"))
            continue
        out.append((ev, fields, t))
    rest = f"; left out of its group of {len(events)}, the others go on" if len(events) > 1 and out else ""
    for ev, why in failed:
        _warn(f"event {ev!r} not recorded ({why}){rest}")
    return out, [ev for ev, _ in failed]


def _append(events: list[tuple[str, dict, str]], thread_locked: bool = False) -> list[str]:
    """Append (event, fields, time) tuples as lines, in one locked, fsynced write
    (``thread_locked``: the caller holds this process's ``_thread_lock`` already); returns the
    names of the events left out because their fields cannot be recorded (each said in a
    warning line, :func:`_prepared`).

    Before chaining on, the head record is read and checked against the log as found (under the
    lock): a log shorter than the head says, a last line other than the one it sealed, or a
    head missing or damaged while the trail has lines is never re-sealed quietly; the trail
    itself records it first (``audit.tail_missing`` / ``audit.head_missing``, carrying the old
    head's line count and sha256), and ``verify`` reports that line as a break from then on."""
    from .. import __version__
    from .sitekey import key_fingerprint, site_key

    folder = audit_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = site_key()
    mkey = _mac_key(key)
    fp = key_fingerprint()
    prepared, failed = _prepared(events)
    if not prepared:
        return failed
    user, host, pid = _user(), socket.gethostname(), os.getpid()
    path = folder / LOG_NAME
    with contextlib.nullcontext() if thread_locked else _thread_lock, _Locked(folder):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            size = os.fstat(fd).st_size
            last, end = _last_line(fd, size)
            frag = kept = None
            if end < size:  # an incomplete final line: copied aside now, cut just before the write
                if size - end > MAX_FRAGMENT:  # not a torn line of ours: never cut, never append
                    raise OSError(errno.EINVAL, f"the log ends with {size - end} bytes that are not a "
                                                "complete line; left untouched (run `audit verify`)")
                frag = os.pread(fd, size - end, end)
                kept = _set_aside(folder, frag)  # removed again when it is still in the log
                size = end
            try:
                seq, prev, first, data = _prepare(fd, folder, path, size, last, prepared, frag, kept,
                                                  mkey, fp, user, host, pid, __version__)
                if frag is not None:
                    os.ftruncate(fd, size)
                n = os.write(fd, data)  # one write on O_APPEND: whole lines or (below) nothing
                if n != len(data):
                    raise OSError(errno.ENOSPC, f"short write ({n} of {len(data)} bytes)")
                os.fsync(fd)
            except BaseException:
                _undo(fd, folder, size, frag, kept)
                raise
            seq0 = seq - data.count(b"\n")
            if size + len(data) >= _rotate_bytes():
                first_seq = seq0 + 1 if size == 0 else seq - _count_lines(fd, size + len(data)) + 1
                _close_part(folder, path, first_seq, seq)
        finally:
            os.close(fd)
        _write_head(folder, seq, prev, mkey)
        if first:
            _mark_started(path, hashlib.sha256(data[:data.index(b"\n")]).hexdigest(), mkey)
    return failed


def _undo(fd: int, folder: Path, size: int, frag: bytes | None, kept: str | None) -> None:
    """After a failed append: the log back as it was found (``size`` bytes, then the torn
    fragment if there was one), and the copy set aside removed once the fragment is back in
    place (a full disk then leaves no stray file per try).  Best effort: what cannot be put
    back stays in the copy set aside, never lost."""
    try:
        os.ftruncate(fd, size)
    except OSError:
        return
    if frag is None:
        return
    try:
        if os.fstat(fd).st_size == size and os.write(fd, frag) == len(frag):
            os.fsync(fd)
            os.unlink(folder / kept)
    except OSError:
        pass


def _prepare(fd, folder, path, size, last, prepared, frag, kept, mkey, fp, user, host, pid, app):
    """(last seq, its sha256, whether this starts the trail, the bytes to append): the caller's
    events sealed and chained on, after the events the trail records about itself."""
    named_seq = None
    if last is None and size == 0:  # a new live log: the chain goes on from the newest part
        closed = parts(folder)
        if closed:
            last, named_seq = _part_tail(closed[-1][2]), closed[-1][1]
            if last is None:
                raise OSError(errno.EINVAL, f"the closed part {closed[-1][2].name} holds no complete "
                                            "line: the chain cannot go on (run `audit verify`)")
    if last is None:
        seq, prev = 0, GENESIS
    else:
        prev = hashlib.sha256(last).hexdigest()
        try:
            seq = int(json.loads(last)["seq"])
        except Exception:  # noqa: BLE001 - an edited last line: count instead
            seq = named_seq if named_seq is not None else _count_lines(fd, size)
    own = []  # what the trail says about itself, before the caller's events
    first = seq == 0
    if first:  # a trail started here before: say so in the new one (verify fails at line 1)
        old = _load_starts(mkey)[0].get(str(path))
        if isinstance(old, dict):
            own.append(("audit.restarted", {
                "reason": "a trail was started in this place before and is gone",
                "previous_start": old.get("started"),
                "previous_first_line_sha256": old.get("first_line_sha256")}, _now()))
    head, head_err = _read_head(folder / HEAD_NAME, mkey)
    gap = _tail_gap(head, head_err, seq, prev if last is not None else None)
    if frag is not None:
        fields = {"fragment_bytes": len(frag), "fragment_sha256": hashlib.sha256(frag).hexdigest(),
                  "kept_as": kept}
        if gap is None:
            own.append(("audit.recovered", {
                "reason": "an incomplete last line (interrupted write) was moved out of the log",
                **fields}, _now()))
        else:
            if gap[0] == "audit.tail_missing" and gap[1]["head_lines"] > seq:
                # the head counted this line: it was complete and fsynced, so no crash tore it
                fields["reason"] = (f"line {seq + 1}, counted by the head, was found cut inside (not an "
                                    "interrupted write): its remains were moved out of the log")
            gap[1]["fragment"] = fields
    if gap is not None:
        own.append((gap[0], gap[1], _now()))
    out = []
    for ev, f, when in own + prepared:
        seq += 1
        obj = {"seq": seq, "time": when,
               "user": user, "host": host, "pid": pid, "app": app, "event": ev,
               "fields": f, "key": fp, "prev": prev}
        body = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False,
                          default=str).encode("ascii")
        if len(body) > MAX_FIELDS_BYTES:
            fj = json.dumps(f, ensure_ascii=True, sort_keys=True, default=str).encode()
            obj["fields"] = {"too_large": True, "bytes": len(fj),
                             "sha256": hashlib.sha256(fj).hexdigest()}
            body = json.dumps(obj, ensure_ascii=True, separators=(",", ":"),
                              default=str).encode("ascii")
        line = _seal(body, mkey)
        prev = hashlib.sha256(line).hexdigest()
        out.append(line + b"\n")
    return seq, prev, first, b"".join(out)


TAIL_MISSING = "audit.tail_missing"
HEAD_MISSING = "audit.head_missing"
_BREAKS = (TAIL_MISSING, HEAD_MISSING)


def _tail_gap(head: dict | None, head_err: str | None, seq: int, last_sha: str | None) -> tuple[str, dict] | None:
    """The event that records why the trail as found does not end where its head says, or None
    when it does (or the head only lags behind, as after a crash between a line and its head)."""
    if head_err is not None or head is None:
        if seq == 0:
            return None  # nothing written yet (or the whole trail is gone: audit.restarted says so)
        why = (head_err or f"the head record {HEAD_NAME} was missing").removesuffix(
            ": tail truncation cannot be checked")
        return HEAD_MISSING, {"reason": why,
                              "lines_found": seq, "last_sha256": last_sha}
    hl, hs = head.get("lines"), head.get("sha256")
    if hl > seq or (hl == seq and hl > 0 and hs != last_sha):
        why = (f"the head counted {hl} lines, {seq} were found: the tail was cut off" if hl > seq else
               f"line {hl} is not the line the head sealed: the tail was replaced")
        return TAIL_MISSING, {"reason": why, "head_lines": hl, "head_sha256": hs,
                              "lines_found": seq, "last_sha256": last_sha}
    return None


def _close_part(folder: Path, path: Path, first: int, last: int) -> None:
    """Rename the live log to its part name (under the audit lock), read-only; the next append
    starts a new live log that chains on from the part's last line.  A failure leaves the live
    log as it is (it grows on, and the next append tries again)."""
    part = folder / part_name(first, last)
    try:
        if part.exists() or part.with_name(part.name + ".gz").exists():
            raise OSError(errno.EEXIST, f"{part.name} exists already")
        os.rename(path, part)
        os.chmod(part, 0o400)
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)  # the rename survives a power loss
        finally:
            os.close(dfd)
    except OSError as e:
        _warn(f"the audit log could not be closed as {part.name} ({e.strerror or e}): it grows on")


STARTS_NAME = "audit-started.json"


def _starts_path() -> Path:
    from ..userdirs import config_dir

    return config_dir() / STARTS_NAME


def _mark_started(log: Path, first_sha: str, mkey: bytes) -> None:
    """Note in the *config* folder that this log was started, and with which first line: a
    trail deleted or replaced wholesale in the data folder is then found by ``verify``
    (best effort: a failure here only weakens that check)."""
    try:
        p = _starts_path()
        starts, problem = _load_starts(mkey)
        if problem:  # never overwrite a damaged note: it is evidence
            raise OSError(errno.EINVAL, problem)
        if str(log) in starts:  # never overwritten: a restarted trail stays visible to verify
            return
        starts[str(log)] = {"first_line_sha256": first_sha,
                            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        body = json.dumps({"logs": starts}, sort_keys=True, separators=(",", ":")).encode("ascii")
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, _seal(body, mkey) + b"\n")
        finally:
            os.close(fd)
        os.replace(tmp, p)
    except Exception as e:  # noqa: BLE001
        _warn(f"the start of the trail could not be noted in the config folder ({e})")


def _load_starts(mkey: bytes | None) -> tuple[dict, str | None]:
    """({log path: {first_line_sha256, started}}, None); ({}, None) when there is no note;
    ({}, why) when the note exists but is damaged or its seal does not hold."""
    try:
        raw = _starts_path().read_bytes().strip()
    except FileNotFoundError:
        return {}, None
    except OSError as e:
        return {}, f"cannot read {STARTS_NAME}: {e.strerror or e}"
    bad = (f"the start note {STARTS_NAME} in the config folder was altered (or sealed with "
           "another site key): whether the trail was deleted and restarted cannot be checked")
    m = _MAC_RE.search(raw)
    if m is None:
        return {}, bad
    if mkey is not None:
        want = hmac.new(mkey, raw[:m.start()] + b"}", hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(want, m.group(1)):
            return {}, bad
    try:
        d = json.loads(raw).get("logs")
    except (ValueError, AttributeError):
        return {}, bad
    return (d, None) if isinstance(d, dict) else ({}, bad)


def _set_aside(folder: Path, frag: bytes) -> str:
    """Keep a torn tail beside the log (nothing is deleted); returns its file name."""
    name = f"audit.fragment.{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%dT%H%M%S%f')}.bin"
    fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if os.write(fd, frag) != len(frag):
            raise OSError(errno.ENOSPC, f"short write setting aside the torn tail ({name})")
        os.fsync(fd)
    except BaseException:  # a full disk: no empty or partial copy left behind (the log keeps it)
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(folder / name)
        raise
    os.close(fd)
    return name


def _head_body(lines: int, sha: str) -> bytes:
    return json.dumps({"lines": lines, "sha256": sha}, separators=(",", ":")).encode("ascii")


HEAD_BYTES = 256  # the head record is one fixed-size block, overwritten in place


def _write_head(folder: Path, lines: int, sha: str, mkey: bytes) -> None:
    """The sealed head record (line count, last line's sha256), padded with spaces to one
    fixed 256-byte block and overwritten in place with one ``pwrite`` (under the audit lock).
    In place rather than write-and-rename: renaming over a file makes ext4 flush the new data
    first, which tripled the cost of a record.  Not fsynced: after a power loss it may lag the
    log by the last lines, which verify accepts and names (they still chain and carry seals; the
    log line itself was fsynced first); a torn block is reported as a damaged head."""
    rec = _seal(_head_body(lines, sha), mkey)
    block = rec + b" " * (HEAD_BYTES - 1 - len(rec)) + b"\n"
    fd = os.open(folder / HEAD_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        created = os.fstat(fd).st_size == 0
        os.pwrite(fd, block, 0)
        if os.fstat(fd).st_size > HEAD_BYTES:
            os.ftruncate(fd, HEAD_BYTES)
        if created:  # once per trail: a head lost to a power loss right after the first line
            with contextlib.suppress(OSError):  # would make the next append record audit.head_missing
                os.fsync(fd)
                dfd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- reading
def _lines(path: Path, fh=None, limit: int | None = None):
    """(line without its newline, state) streamed, state "ok", "long" (over MAX_LINE: its start
    only, the rest skipped unread into memory) or "partial" (the last bytes, without a newline).
    A gzipped part is read through.  ``fh``: the file as :class:`_Snapshot` opened it (read from
    its start; a part renamed or gzipped since is still read as it was); ``limit``: read no
    further than this many bytes (the live log's size in the snapshot)."""
    import gzip

    if fh is None:
        src = _open_part(path)
    else:
        fh.seek(0)
        src = gzip.GzipFile(fileobj=fh, mode="rb") if path.name.endswith(".gz") else contextlib.nullcontext(fh)
    with src as f:
        left = [limit]

        def readline(n: int) -> bytes:
            if left[0] is not None:
                n = min(n, left[0])
                if n <= 0:
                    return b""
            got = f.readline(n)
            if left[0] is not None:
                left[0] -= len(got)
            return got

        while True:
            chunk = readline(MAX_LINE + 1)
            if not chunk:
                return
            if chunk.endswith(b"\n"):
                yield chunk[:-1], "ok"
                continue
            if len(chunk) <= MAX_LINE:
                yield chunk, "partial"
                return
            while True:  # skip the rest of an overlong line
                more = readline(MAX_LINE)
                if not more or more.endswith(b"\n"):
                    break
            yield chunk[:200], "long"
            if not more:
                return


def _files(p: Path) -> list[Path]:
    """The trail's files in order: its closed parts (beside ``p``), then the live log ``p``."""
    return [f for _a, _b, f in parts(p.parent)] + ([p] if p.exists() else [])


class _Snapshot:
    """The trail as it stood at one moment, for ``verify`` and ``iter_entries``: under the audit
    lock (for the few milliseconds it takes, never for the whole read) the files are listed and
    opened, the live log's size is noted and the head record (and, ``mkey`` given, the start
    note) read.  Why: an append that closes the live log as a part while a reader is still in
    older parts made the reader open the *new* live log and report the lines in between as
    deleted (a false tamper, exit 2); the open descriptors keep reading what was listed, and
    lines appended after the snapshot are left for the next read.

    ``files``: [(path, open file or None, byte limit or None)], parts first; a file that could
    not be opened here (too many parts for the descriptor limit, a part gzipped in between, no
    permission) is None and opened by path when read (closed parts do not change; a file that
    cannot be read is named then, as before).  ``head``: the head's bytes,
    None when absent, or the OSError reading it.  ``starts``: ``_load_starts(mkey)`` or None.
    Raises OSError when the lock stays busy (LOCK_TIMEOUT_S)."""

    def __init__(self, p: Path, mkey: bytes | None = None, starts: bool = False):
        self.p, self.mkey, self.want_starts = p, mkey, starts
        self.files: list = []
        self.head: bytes | OSError | None = None
        self.starts = None
        self._stack = contextlib.ExitStack()

    def __enter__(self):
        try:
            with _Locked(self.p.parent, reader=True):
                self.take()
        except BaseException:
            self._stack.close()
            raise
        return self

    def take(self) -> None:
        """List and open the files, read the head (and start note); the caller holds the lock."""
        for f in _files(self.p):
            try:
                fh = self._stack.enter_context(open(f, "rb"))
            except OSError:  # read by path later, which names the problem as before
                fh = None
            live = fh is not None and f == self.p
            self.files.append((f, fh, os.fstat(fh.fileno()).st_size if live else None))
        try:
            self.head = self.p.with_name(HEAD_NAME).read_bytes()
        except FileNotFoundError:
            self.head = None
        except OSError as e:
            self.head = e
        if self.want_starts:
            self.starts = _load_starts(self.mkey)

    def __exit__(self, *exc):
        self._stack.close()


def iter_entries(path: Path | None = None):
    """Every complete line of the trail (closed parts, then the live log) parsed, streamed
    (memory does not grow with the trail): None for a line that is not a JSON object, or for a
    part that cannot be read.  The trail as it stood when the first entry is asked for
    (:class:`_Snapshot`): lines appended meanwhile are not listed."""
    p = Path(path) if path else log_path()
    snap = _Snapshot(p)
    try:
        snap.__enter__()
    except OSError as e:  # a lock held this long (a stuck append): list what is there, and say so
        _warn(f"the trail was read without its lock ({_why(e)}): a part closed meanwhile may show as a gap; "
              "run `imaging-assist audit verify`")
        snap.take()
    try:
        for f, fh, limit in snap.files:
            try:
                for raw, state in _lines(f, fh, limit):
                    if state == "partial":
                        continue
                    if state == "long" or not raw:  # kept as None: numbering stays that of verify
                        yield None
                        continue
                    try:
                        obj = json.loads(raw)
                        yield obj if isinstance(obj, dict) else None
                    except ValueError:
                        yield None
            except FileNotFoundError:
                continue
            except (OSError, EOFError, zlib.error):  # a damaged .gz part: verify names it
                yield None
    finally:
        snap.__exit__(None, None, None)


def read_entries(path: Path | None = None) -> list[dict | None]:
    """:func:`iter_entries` as a list (for small trails and tests)."""
    return list(iter_entries(path))


def _read_head(head_p: Path, mkey: bytes | None) -> tuple[dict | None, str | None]:
    """(the head record, None) or (None, why it cannot be used); (None, None) when absent."""
    try:
        head_raw = head_p.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as e:
        head_raw = e
    return _parse_head(head_raw, mkey)


def _parse_head(head_raw: bytes | OSError | None, mkey: bytes | None) -> tuple[dict | None, str | None]:
    """:func:`_read_head` of the bytes read (None: absent; an OSError: unreadable)."""
    if head_raw is None:
        return None, None
    if isinstance(head_raw, OSError):
        return None, f"cannot read the head record: {head_raw.strerror or head_raw}"
    head_raw = head_raw.strip()
    m = _MAC_RE.search(head_raw)
    try:
        head = json.loads(head_raw)
    except ValueError:
        head = None
    if m is None or not isinstance(head, dict) or not isinstance(head.get("lines"), int):
        return None, (f"the head record {HEAD_NAME} is damaged (unreadable: edited, or lost in a "
                      "power failure): tail truncation cannot be checked")
    if mkey is not None:
        want = hmac.new(mkey, head_raw[:m.start()] + b"}", hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(want, m.group(1)):
            return None, f"the head record {HEAD_NAME} was altered (its seal does not match)"
    return head, None


def _check_line(i: int, raw: bytes, prev: str, mkey: bytes | None, fp: str | None) -> str | None:
    """Why line ``i`` breaks the trail, or None."""
    try:
        obj = json.loads(raw)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        return f"line {i} is not an audit record (not a JSON object): the log was edited"
    m = _MAC_RE.search(raw)
    if m is None:
        return f"line {i} carries no seal: it was not written by the audit trail (forged or edited)"
    if mkey is not None:
        if obj.get("key") != fp:
            return (f"line {i} was sealed with another site key ({obj.get('key')}, this "
                    f"installation has {fp}): it cannot be checked here")
        want = hmac.new(mkey, raw[:m.start()] + b"}", hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(want, m.group(1)):
            return f"line {i} was altered after it was written (its seal does not match its content)"
    seq = obj.get("seq")
    if seq != i:
        if isinstance(seq, int) and seq > i:
            gone = f"record {i} before it was" if seq - i == 1 else f"records {i}-{seq - 1} before it were"
            return f"line {i} is record {seq}: {gone} deleted (or lines were reordered)"
        return f"line {i} is record {seq}: lines were reordered or repeated"
    if obj.get("prev") != prev:
        if i == 1:
            return "line 1 does not start the chain: lines before it were deleted"
        return (f"line {i} does not follow line {i - 1} (chain broken: a line was edited, inserted, "
                "deleted or reordered)")
    return None


KEY_MISSING = "seals cannot be checked: the site key is missing"


def parse_anchor(text: str) -> tuple[int, str]:
    """``"N:SHA256"`` (as ``audit verify`` prints the head) as (N, lower-case hex); a prefix of
    the sha256 is accepted.  ValueError (one line) for anything else."""
    bad = ValueError(f"anchor {text!r}: expected LINE:SHA256 as printed by `audit verify` "
                     "(N a line number, SHA256 hexadecimal digits)")
    try:
        n_s, h = str(text).strip().split(":", 1)
        n, h = int(n_s), h.strip().lower()
    except ValueError:
        raise bad from None
    if n < 1 or not h or len(h) > 64 or any(c not in "0123456789abcdef" for c in h):
        raise bad
    return n, h


def _break_reason(i: int, obj: dict) -> str:
    """What a trail's own ``audit.tail_missing`` / ``audit.head_missing`` line at line ``i``
    records, as one line for ``verify``."""
    f = obj.get("fields") if isinstance(obj.get("fields"), dict) else {}
    found = f.get("lines_found")
    frag = f.get("fragment") if isinstance(f.get("fragment"), dict) else None
    cut = ""
    if frag:
        cut = f"; the remains of a cut line ({frag.get('fragment_bytes')} bytes) were kept as {frag.get('kept_as')}"
    if obj.get("event") == TAIL_MISSING:
        hl, hs = f.get("head_lines"), str(f.get("head_sha256") or "")
        if isinstance(hl, int) and isinstance(found, int) and hl > found:
            gone = f"line {found + 1}" if hl - found == 1 else f"lines {found + 1}-{hl}"
            return (f"line {i} records that the trail had been cut off before it was written: the head "
                    f"counted {hl} lines (head {hl}:{hs[:16]}...), {found} were left, so {gone} of the earlier "
                    f"trail are missing{cut}")
        return (f"line {i} records that the last line found before it was not the one the head had "
                f"sealed (head {hl}:{hs[:16]}...): the tail was replaced{cut}")
    return (f"line {i} records that the head record was missing or damaged when it was written "
            f"({f.get('reason', '?')}): whether lines were cut off before it cannot be checked{cut}")


def verify(path: Path | None = None, anchor: str | None = None,
           require_key: bool = False) -> tuple[bool, int | None, str]:
    """Check the chain, the seals and the head record: ``(ok, first_bad_line, reason)``.

    ``first_bad_line`` is the 1-based line where the trail stops holding (None when it holds);
    ``reason`` is one line.  ``anchor`` ``"N:SHA256"`` (from an earlier ``verify``, kept
    elsewhere) must match line N: this also catches a consistent rewrite by a key holder.
    ``require_key``: a trail that was sealed (it has lines, a head or a start note) cannot pass
    without the site key (``audit verify`` asks for this; reason starts with :data:`KEY_MISSING`);
    otherwise the chain alone is checked and the reason says the seals were not.
    A line where the trail recorded its own damage (``audit.tail_missing``: the tail was cut;
    ``audit.head_missing``: the head was gone) is a break for good: ``verify`` names the first
    such line (the rest of the trail is still checked, and named after it).
    The log is streamed (memory does not grow with its length)."""
    from .sitekey import key_fingerprint, key_path, site_key

    p = Path(path) if path else log_path()
    an = ah = None
    if anchor:
        try:
            an, ah = parse_anchor(anchor)
        except ValueError as e:
            return False, None, str(e)
    mkey = fp = None
    if key_path().exists():
        try:
            mkey, fp = _mac_key(site_key()), key_fingerprint()
        except Exception as e:  # noqa: BLE001 - a damaged key: said, nothing is claimed
            return False, None, f"the site key cannot be read ({e}): the seals cannot be checked"
    # the trail as it stood at one moment (the audit lock held only to take it): an append that
    # closes the live log as a part meanwhile is not mistaken for deleted lines
    try:
        snap = _Snapshot(p, mkey, starts=True).__enter__()
    except OSError as e:
        return False, None, (f"the trail cannot be read now ({_why(e)}: an append is stuck, or another "
                             "program holds the lock); run verify again")
    try:
        return _verify(snap, p, an, ah, mkey, fp, require_key)
    finally:
        snap.__exit__(None, None, None)


def _verify(snap: _Snapshot, p: Path, an, ah, mkey, fp, require_key: bool) -> tuple[bool, int | None, str]:
    """:func:`verify` of a snapshot of the trail."""
    from .sitekey import key_path

    starts, start_problem = snap.starts
    start = starts.get(str(p))
    start = start if isinstance(start, dict) else None
    files = [f for f, _fh, _limit in snap.files]
    if not files:
        if snap.head is not None:
            return False, 1, f"the log {p} is missing but its head record exists: the log was deleted"
        if start is not None:
            return False, 1, (f"the log {p} is missing, but a trail was started there on "
                              f"{start.get('started')}: the log was deleted")
        if an is not None:
            return False, 1, f"the log {p} is missing, the anchor names line {an}: the log was deleted"
        return True, None, "no audit trail yet (nothing recorded)"
    head, head_err = _parse_head(snap.head, mkey)
    hl = head["lines"] if head else None
    prev, n, incomplete = GENESIS, 0, b""
    at_head = at_anchor = None
    recorded: list = []  # (line, reason) of the trail's own records of damage, first one kept

    def broken(line, why):
        if not recorded:
            return False, line, why
        more = f" (and {recorded[1]} later record(s) of damage)" if recorded[1] else ""
        return False, recorded[0][0], f"{recorded[0][1]}{more}; after it: {why}"

    # lines are numbered from the start of the trail, across its closed parts; a reason found
    # in a part names it
    for f, fh, limit in snap.files:
        where = f" (in {f.name})" if len(files) > 1 else ""
        try:
            for raw, state in _lines(f, fh, limit):
                if state == "partial":
                    if f != p:
                        return broken(n + 1, f"line {n + 1} is incomplete{where}: the closed part was cut "
                                             "or damaged")
                    incomplete = raw
                    break
                n += 1
                if state == "long":
                    return broken(n, f"line {n} is longer than {MAX_LINE // 1024} KiB: not an audit record{where}")
                why = _check_line(n, raw, prev, mkey, fp)
                if why:
                    return broken(n, why + where)
                prev = hashlib.sha256(raw).hexdigest()
                if n == 1 and start is not None and start.get("first_line_sha256") != prev:
                    return broken(1, (f"line 1 is not the line this trail started with on {start.get('started')}: "
                                      "the log was deleted and started again, or replaced"))
                if b'"event":"audit.' in raw:
                    obj = json.loads(raw)
                    if obj.get("event") in _BREAKS:
                        if not recorded:
                            recorded[:] = [(n, _break_reason(n, obj) + where), 0]
                        else:
                            recorded[1] += 1
                if n == hl:
                    at_head = prev
                if n == an:
                    at_anchor = prev
        except (OSError, EOFError, zlib.error) as e:
            return broken(n + 1, f"cannot read {f}: {getattr(e, 'strerror', None) or e}")
    if incomplete:
        return broken(n + 1, (f"line {n + 1} is incomplete ({len(incomplete)} bytes without an end of "
                              "line): a write was interrupted (crash, full disk) or the tail was cut; the "
                              "next event sets it aside and records that"))
    if n == 0 and start is not None:  # emptied (and its head deleted): still a deleted trail
        return broken(1, (f"the log {p} holds no line, but a trail was started there on "
                          f"{start.get('started')}: its lines were deleted"))
    # the head record: detects a log cut after its last sealed line
    note = ""
    if head_err:
        return broken(n + 1, head_err)
    if head is None:
        if n:
            return broken(n + 1, (f"the head record {HEAD_NAME} is missing: whether lines after line {n} "
                                  "were cut off cannot be checked"))
    else:
        if hl > n:
            missing = f"line {n + 1}" if hl - n == 1 else f"lines {n + 1}-{hl}"
            return broken(n + 1, (f"the log ends at line {n} but {hl} lines were written: the tail was "
                                  f"cut off ({missing} missing)"))
        if hl > 0 and at_head != head.get("sha256"):
            return broken(hl, f"line {hl} is not the line the head record sealed: the tail was replaced")
        if hl < n:  # lines after the head: a crash between the append and the head update
            note = f"; lines {hl + 1}-{n} were written after the last head update (a crash?)"
    if an is not None:
        if an > n:
            return broken(n + 1, f"the anchor names line {an}, the log has {n} lines: lines were removed")
        if not at_anchor.startswith(ah):
            return broken(an, f"line {an} differs from the anchor noted earlier: the log was rewritten")
    if start_problem and mkey is not None:
        return broken(None, start_problem)
    if mkey is None and require_key and (n or start is not None or head is not None):
        return broken(None, (f"{KEY_MISSING} ({key_path()}), yet the trail was sealed with one: restore "
                             "site.key from a backup of the config folder"))
    head_s = f"head {n}:{prev if n else GENESIS}"
    if recorded:
        more = f" (and {recorded[1]} later record(s) of damage)" if recorded[1] else ""
        return False, recorded[0][0], (f"{recorded[0][1]}{more}; the trail holds after it "
                                       f"({n} lines{note}; {head_s})")
    keynote = "" if mkey is not None else " (seals not checked: no site key on this machine)"
    split = f" in {len(files) - (p in files)} closed part(s) and the live log" if len(files) > 1 or p not in files else ""
    return True, None, f"{n} lines{split}, chain holds{keynote}{note}; {head_s}"


# --------------------------------------------------------------------------- event helpers
def _header(rec, keyword: str):
    try:
        v = rec.get(keyword)
    except Exception:  # noqa: BLE001
        return None
    return None if v in (None, "") else str(v)


def _ids_of(volume) -> dict:
    """Patient / study / series / instance identifiers of a volume, for pseudonymisation."""
    headers = list(getattr(volume, "headers", None) or [])
    h0 = headers[0] if headers else None
    f: dict[str, Any] = {}
    if h0 is not None:
        f["patient_id"] = _header(h0, "PatientID")
        f["study_uid"] = _header(h0, "StudyInstanceUID")
    f["series_uid"] = getattr(volume, "series_uid", "") or None
    sops = [_header(h, "SOPInstanceUID") for h in headers]
    sops = list(dict.fromkeys(s for s in sops if s))
    if sops:
        f["instance_uids"] = sops
    paths = list(getattr(volume, "source_paths", None) or [])
    if paths and not headers:  # a plain image or slide: the file is what identifies it
        f["source_paths"] = paths[:MAX_LIST + 1] if len(paths) > MAX_LIST else paths
    return {k: v for k, v in f.items() if v not in (None, "", [])}


def record_open(series, volume, stack: int = 0) -> bool:
    """A series loaded for display or analysis (``dicom.loader.SeriesLoader.run``)."""
    try:
        f = _ids_of(volume)
        f.update({"modality": getattr(volume, "modality", "") or None,
                  "instances": len(getattr(series, "instances", []) or []),
                  "slices": int(volume.array.shape[0]), "stack": stack + 1})
    except Exception as e:  # noqa: BLE001
        _warn(f"study open not recorded ({type(e).__name__}: {e})")
        return False
    return record("study.open", **f)


def outputs_sha256(res) -> str:
    """sha256 over what a run produced: its results dict without timings/device (canonical
    JSON) and the raw bytes of its label map, region map and heat maps."""
    import numpy as np

    h = hashlib.sha256()
    try:
        d = res.to_dict()
    except Exception:  # noqa: BLE001 - a result type without to_dict
        d = {}
    for k in ("timings_s", "device", "precision", "batched", "source"):
        d.pop(k, None)
    h.update(json.dumps(d, sort_keys=True, default=str, separators=(",", ":")).encode())
    arrays = [getattr(res, "label_map", None), getattr(res, "region_map", None)]
    arrays += [hm.array for hm in getattr(res, "heatmaps", []) or []]
    for a in arrays:
        if a is None:
            h.update(b"\x00none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"\x00{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _decision(res, card=None) -> dict:
    """What the run decided, as the app shows it: per thresholded label its state (positive /
    review / negative / withheld, models.operating_point.decide_item, withheld when the input
    is out of distribution), the top label and the probabilities; for segmenters the labels
    found and whether the card's quality checks passed."""
    out: dict[str, Any] = {}
    probs = getattr(res, "probabilities", None)
    ood = getattr(res, "ood", None)
    flagged = bool(isinstance(ood, dict) and ood.get("flagged"))
    if isinstance(probs, dict) and probs:
        out["probabilities"] = {k: round(float(v), 4) for k, v in probs.items()}
        out["top_label"] = max(probs, key=probs.get)
        dec = getattr(res, "decisions", None)
        if isinstance(dec, dict):
            out["thresholded"] = {k: (None if not isinstance(v, dict) or v.get("positive") is None
                                      else ("positive" if v["positive"] else "negative"))
                                  for k, v in dec.items()}
        if card is not None:
            try:
                from ..models.operating_point import decide_item

                d = decide_item(card, probs, "outside what this model was trained on" if flagged else "")
                out["decision"] = {x["label"]: x["state"] for x in d["labels"]}
            except Exception as e:  # noqa: BLE001 - the rest of the record still holds
                out["decision"] = f"not computed ({type(e).__name__})"
    counts = getattr(res, "voxel_counts", None)
    if isinstance(counts, dict) and counts:
        out["labels_found"] = [k for k, v in counts.items() if v]
        q = getattr(res, "quality", None)
        if isinstance(q, dict) and "passed" in q:
            out["quality_passed"] = bool(q["passed"])
    if isinstance(ood, dict) and "flagged" in ood:
        out["ood_flagged"] = ood.get("flagged")
    return out


def record_model_run(model, volume, res) -> bool:
    """One model run (``inference.pipelines._run_on``): model id, version, weights sha256, the
    inputs' identifiers (pseudonymised), a hash of the outputs and the decision."""
    try:
        card = model.card
        f: dict[str, Any] = {"model": card.id, "model_version": getattr(card, "version", ""),
                             "weights_sha256": dict(getattr(model, "hashes", {}) or {}),
                             "task": getattr(card, "task", ""), "device": getattr(res, "device", ""),
                             "explain": [f"{hm.method}:{hm.label}" for hm in getattr(res, "heatmaps", [])]}
        f.update(_ids_of(volume))
        f["outputs_sha256"] = outputs_sha256(res)
        f.update(_decision(res, card))
        f["warnings"] = len(getattr(res, "warnings", []) or [])
    except Exception as e:  # noqa: BLE001
        _warn(f"model run not recorded ({type(e).__name__}: {e})")
        return False
    return record("model.run", **f)


def file_sha256(path) -> str | None:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


def record_export(kind: str, out_path, volume=None, datasets=None, **extra) -> bool:
    """A result written to disk (SEG, SR, PM, PDF, report, results.json...): its kind, the
    output (pseudonymised path, sha256 of the bytes written) and the source's identifiers."""
    try:
        f: dict[str, Any] = {"kind": kind, "output": os.fspath(out_path), "sha256": file_sha256(out_path)}
        if volume is not None:
            f.update(_ids_of(volume))
        elif datasets:
            ds = datasets[0]
            f["patient_id"] = getattr(ds, "PatientID", None)
            f["study_uid"] = getattr(ds, "StudyInstanceUID", None)
            f["series_uid"] = getattr(ds, "SeriesInstanceUID", None)
        f.update(extra)
    except Exception as e:  # noqa: BLE001
        _warn(f"export not recorded ({type(e).__name__}: {e})")
        return False
    return record("export", **f)


def record_transfer(direction: str, result, **extra) -> bool:
    """A PACS transfer: ``direction`` "retrieve" (a ``pacs.transfer.TransferResult``) or "send"
    (a ``pacs.send.SendResult``), with the peer, method and counts; UIDs and folders are
    pseudonymised, lists of failures/skipped files become counts (their texts name paths)."""
    try:
        d = result.to_dict() if hasattr(result, "to_dict") else dict(result)
        f: dict[str, Any] = {"direction": direction}
        for k, v in d.items():
            if k in ("failures", "skipped", "notes") and isinstance(v, list):
                f[k] = len(v)
            elif not isinstance(v, (dict, list)):
                f[k] = v
        f.update(extra)
    except Exception as e:  # noqa: BLE001
        _warn(f"PACS transfer not recorded ({type(e).__name__}: {e})")
        return False
    return record(f"pacs.{direction}", **f)


def record_open_file(path, kind: str, **extra) -> bool:
    """A slide or plain image opened (``slides.reader.open_slide``, ``inference.images.read_image``):
    the same ``study.open`` event as a DICOM series, named by its pseudonymised path."""
    return record("study.open", kind=kind, path=os.fspath(path), **extra)


def record_index(index) -> bool:
    """A folder indexed (``dicom.index.scan``: the study browser, ``scan``, and every command
    before it loads a series): the patients and studies whose headers were read and listed."""
    try:
        patients = list(getattr(index, "patients", []) or [])
        if not patients:
            return True  # nothing identifying was read: no event
        studies = [st.uid for p in patients for st in p.studies]
        f = {"path": getattr(index, "root", ""), "patient_ids": [p.id for p in patients],
             "study_uids": studies, "patients": len(patients), "studies": len(studies),
             "series": sum(len(st.series) for p in patients for st in p.studies),
             "files": getattr(index, "n_files", 0)}
    except Exception as e:  # noqa: BLE001
        _warn(f"study index not recorded ({type(e).__name__}: {e})")
        return False
    return record("study.index", **f)
