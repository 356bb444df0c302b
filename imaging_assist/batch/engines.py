"""The two ways a batch runs: ``local`` (one process) and ``ray`` (Ray tasks and actors).

Both run the same :class:`Pipeline` on decoded items: the model part
(:meth:`~.item.ModelRunner.infer`, one at a time: the model's lock) in the calling thread,
the writing part (key-image PNGs, NIfTI, results.json, report, DICOM:
:meth:`~.item.ModelRunner.write`) in a small thread pool, so that item *n* is written while
the model runs on item *n+1* (PNG/zlib encoding and file I/O release the GIL).  Queues are
bounded (``depth``): memory stays flat however large the archive.

* ``local``: decoding (``read_image`` / ``load_series``) in a thread pool ``depth`` items
  ahead of the model, in this process; from :data:`PROCESS_MIN_ITEMS` items on, the same in
  one worker process per CPU (:func:`run_local_processes`).
* ``ray``: the models in actors that load them once (one actor per GPU with ``num_gpus=1``,
  or a share of a GPU with ``--actors`` above the GPU count; without GPUs one actor per CPU
  of each node, one torch thread each, spread), each running the :class:`Pipeline` on chunks
  of ``chunk`` items.  For GPU actors decoding runs as Ray CPU tasks (through the object
  store); a CPU actor decodes its own chunk.
  ``ray.init()`` runs in-process (usage statistics and dashboard off, no dashboard process,
  loopback only) unless
  ``--address`` / ``RAY_ADDRESS`` names a cluster.  On a cluster, SOURCE and OUT must be on
  a file system every node sees under the same path (the actors read and write there).

A whole slide is one item whose tiles are spread over the workers (worker processes or
actors, :class:`Schedule`): one task plans it, its tiles run in parts of
``--tiles-per-task`` on all workers, one task writes it (``analyze_slide``'s three steps).
The in-process ``local`` engine runs ``analyze_slide`` itself.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor

from ..errors import UserError
from ..models.lean import lean_imports
from .item import ModelRunner, Settings, decode_timed

RAY_MISSING = ("--engine ray needs Ray: pip install 'ray==2.60.0' into this environment "
               "(or use --engine local)")


class Pipeline:
    """Models loaded once (``model_ids``: model folders or ids, as ``Registry.get`` takes them);
    :meth:`process` yields rows for decoded units in order."""

    def __init__(self, model_ids, settings: Settings, writers: int = 2, depth: int = 4):
        import torch

        self._threads = torch.get_num_threads()
        torch.set_num_threads(model_threads(settings))
        # ``model_ids``: the model folders the driver resolved each --model to (ids work too);
        # the runners are keyed by their card's id, which is what the units name
        self.runners = {}
        for m in model_ids:
            r = ModelRunner(m, settings)
            self.runners[r.card.id] = r
        self.pool = ThreadPoolExecutor(max(1, writers), thread_name_prefix="batch-write")
        self.depth = max(1, depth)
        self.group = max([1] + [r.batch_size for r in self.runners.values()])

    def versions(self) -> dict:
        return {m: r.version for m, r in self.runners.items()}

    def process(self, decoded):
        """``decoded``: iterable of (unit, (volume, error, seconds)); a unit is (candidate,
        [model ids]).  Yields rows (dicts) as they are finished, in order.  Items are taken
        ``group`` images at a time (the largest card ``inference.batch_size`` / ``--batch-size``
        among the models; fewer when their pixels reach :data:`GROUP_MAX_BYTES`), so a
        classifier's forward pass covers several items (``ModelRunner.infer_many``)."""
        pending: deque = deque()
        group: list = []
        n_images = n_bytes = 0
        try:
            for item in decoded:
                group.append(item)
                n_images += _images(item[1][0])
                n_bytes += _nbytes(item[1][0])
                if n_images < self.group and len(group) < self.group and n_bytes < GROUP_MAX_BYTES:
                    continue
                self._infer(group, pending)
                group, n_images, n_bytes = [], 0, 0
                while pending and (isinstance(pending[0], dict) or pending[0].done()
                                   or len(pending) > self.depth):
                    p = pending.popleft()
                    yield p if isinstance(p, dict) else p.result()
            if group:
                self._infer(group, pending)
            while pending:
                p = pending.popleft()
                yield p if isinstance(p, dict) else p.result()
        finally:
            for p in pending:
                if not isinstance(p, dict):
                    p.cancel()

    def _infer(self, group: list, pending: deque) -> None:
        """Run every model on the decoded items of ``group``; rows or write jobs go to
        ``pending`` in item order (each item's models in the order given)."""
        per_item: list[list] = [[] for _ in group]
        for mid, runner in self.runners.items():
            idx = [k for k, ((c, models), _) in enumerate(group) if mid in models]
            if not idx:
                continue
            items = [(group[k][0][0], *group[k][1]) for k in idx]
            for k, rj in zip(idx, runner.infer_many(items)):
                per_item[k].append((group[k][0][1].index(mid), runner, rj))
        for k in range(len(group)):
            for _, runner, (row, job) in sorted(per_item[k], key=lambda t: t[0]):
                pending.append(row if job is None else self.pool.submit(runner.write, row, job))

    def rows(self, decoded) -> list[dict]:
        """All rows of a chunk (worker processes, actors), its audit events appended together
        when the chunk is done (``audit.grouped``: one fsync per chunk, not two per item),
        before the rows go back to the driver's table."""
        from ..privacy.audit import grouped

        with grouped():
            return list(self.process(decoded))

    def run_units(self, units) -> list[dict]:
        """Rows of ``units``, decoded here one by one (a local worker process, a CPU actor).
        The inputs are named in the audit trail before any is opened (``audit.record_ahead``):
        the chunk's own events are held until it ends and die with a worker killed outright."""
        from ..privacy.audit import MAX_LIST, record_ahead

        units = list(units)
        ahead = []
        for i in range(0, len(units), MAX_LIST):
            part = [u[0] for u in units[i:i + MAX_LIST]]
            ahead.append({"items": len(part), "models": sorted({m for u in units[i:i + MAX_LIST] for m in u[1]}),
                          "series_uids": [c.payload.uid for c in part if c.kind == "series"],
                          "paths": [str(c.payload) for c in part if c.kind != "series"]})
        record_ahead("batch.chunk", ahead)
        return self.rows((u, decode_timed(u[0])) for u in units)

    def task(self, kind: str, args: tuple):
        """One task of a :class:`Schedule` in a worker: ``units`` (a chunk of items, decoded
        here) or a step of a slide spread over the workers (ModelRunner.slide_*)."""
        if kind == "units":
            return self.run_units(args[0])
        c, mid, *rest = args
        return getattr(self.runners[mid], "slide_" + kind)(c, *rest)

    def close(self) -> None:
        import torch

        self.pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(self._threads)


#: A group of items waiting for a shared forward pass holds their decoded volumes; it is cut
#: short at this many bytes of pixels, so full-size radiographs (2-3k px, ~18 MB each as uint16)
#: do not multiply a worker's memory by the batch size (16 224-px films take ~1 MB).
GROUP_MAX_BYTES = 64 * 1024 * 1024


def _nbytes(vol) -> int:
    return int(getattr(getattr(vol, "array", None), "nbytes", 0) or 0)


def _images(vol) -> int:
    """Images an item brings to a forward pass (a series: its slices; a failed decode: 0)."""
    shape = getattr(getattr(vol, "array", None), "shape", None)
    return int(shape[0]) if shape else 0


def model_threads(settings: Settings) -> int:
    """Torch threads for the model: ``--torch-threads``, else all CPUs but one (the one left
    decodes and writes).  Measured here: with torch's default (one thread per core) on a
    busy machine, OpenMP's waiting threads burned 346-376 ms of CPU per chest film against
    12 ms with one thread; the pipeline gets its parallelism from overlapping the stages."""
    if settings.torch_threads:
        return settings.torch_threads
    return max(1, (os.cpu_count() or 1) - 1)


# =========================================================================== worker tasks
class _SlideJob:
    """One slide and one model spread over the workers: plan, then parts of its tiles, then
    finish (driver-side state; the tasks carry only plain values)."""

    def __init__(self, c, mid: str):
        self.c, self.mid = c, mid
        self.sp = self.row = None
        self.plan_s = 0.0
        self.parts: list = []
        self.errors: list[str] = []
        self.waiting = 0
        self.t_tiles = 0.0


class Schedule:
    """The tasks of a batch for a pool of workers (local worker processes, Ray actors).

    Items go in chunks of ``chunk`` (``("units", (chunk,))``, one row each).  A slide is
    spread over the workers: one task plans it (``plan``: tissue and tile grid), its tiles go
    out in parts of ``tiles_per_task`` (``tiles``: probabilities and OOD scores of that part)
    and, once all are back, one task writes it (``finish``: heat maps, top tiles with Grad-CAM,
    results.json, report), the three steps of ``analyze_slide``.  A slide's tasks go ahead of
    further items, so its parts run on all workers at once.  :meth:`next_task` gives the next
    task to send, :meth:`done` takes a task's result and returns the rows it finished.
    Tasks are ``(kind, args, job)``: ``kind`` and ``args`` go to :meth:`Pipeline.task`.
    """

    def __init__(self, units, chunk: int, tiles_per_task: int, workers: int = 1):
        self._units = iter(units)
        self.chunk = max(1, chunk)
        self.tiles_per_task = max(1, tiles_per_task)
        self.workers = max(1, workers)
        self._ready: deque = deque()

    def parts(self, n: int) -> list[tuple[int, int]]:
        """(start, stop) of the parts of a slide's ``n`` tiles: at most ``tiles_per_task``
        each, as many as a multiple of the workers (none idle while others finish), even sizes."""
        k = -(-n // self.tiles_per_task)
        k = max(1, -(-k // self.workers) * self.workers)
        k = min(k, max(1, n))
        starts = [i * n // k for i in range(k)] + [n]
        return list(zip(starts[:-1], starts[1:]))

    def next_task(self):
        if self._ready:
            return self._ready.popleft()
        ch: list = []
        for u in self._units:
            c, models = u
            if c.kind == "slide":
                for mid in models:
                    job = _SlideJob(c, mid)
                    self._ready.append(("plan", (c, mid), job))
                if ch:
                    return ("units", (ch,), None)
                return self._ready.popleft()
            ch.append(u)
            if len(ch) >= self.chunk:
                break
        return ("units", (ch,), None) if ch else None

    def done(self, task, result) -> list[dict]:
        import time

        from ..slides.tiling import plan_part

        kind, _, job = task
        if kind == "units":
            return list(result)
        if kind == "finish":
            return [result]
        if kind == "plan":
            job.row, job.sp, job.plan_s = result
            if job.sp is None:  # the slide cannot be read: its failed row
                return [job.row]
            parts = self.parts(len(job.sp.plan))
            job.waiting = len(parts)
            job.t_tiles = time.perf_counter()
            for start, stop in reversed(parts):  # ahead of everything else, in plan order
                part = plan_part(job.sp.plan, start, stop)
                self._ready.appendleft(("tiles", (job.c, job.mid, part, start), job))
            return []
        # a part of the tiles
        if isinstance(result, str):
            job.errors.append(result)
        else:
            job.parts.append(result)
        job.waiting -= 1
        if job.waiting:
            return []
        if job.errors:
            job.row.update(status="failed", error=job.errors[0],
                           run_s=round(job.plan_s + time.perf_counter() - job.t_tiles, 4))
            return [job.row]
        wall = time.perf_counter() - job.t_tiles  # the time spent on it: planning, then the parts
        self._ready.appendleft(("finish", (job.c, job.mid, job.sp, job.parts, job.row,
                                           job.plan_s + wall, wall), job))
        return []


# =========================================================================== local
def run_local(units, model_ids, settings: Settings, decoders: int = 2, depth: int = 4):
    """Yield rows for ``units`` in one process (decoding ``depth`` items ahead)."""
    pipe = Pipeline(model_ids, settings, depth=depth)
    dec = ThreadPoolExecutor(max(1, decoders), thread_name_prefix="batch-decode")

    def decoded():
        ahead: deque = deque()
        it = iter(units)
        for u in it:
            ahead.append((u, dec.submit(decode_timed, u[0])))
            if len(ahead) >= depth:
                break
        while ahead:
            u, f = ahead.popleft()
            nxt = next(it, None)
            if nxt is not None:
                ahead.append((nxt, dec.submit(decode_timed, nxt[0])))
            yield u, f.result()

    try:
        yield from pipe.process(decoded())
    finally:
        dec.shutdown(wait=True, cancel_futures=True)
        pipe.close()


# ------------------------------------------------------------------ local, several processes
# Measured (scripts/bench_batch.py, 1,000 chest films, 2 CPUs, quiet): in one process the
# stages overlap only where they release the GIL (the model, PNG encoding): about 60 films/s
# once running; the same Pipeline in one process per CPU (one torch thread each) runs every
# stage in parallel: 92 films/s once running.  Each spawned worker first imports torch and
# MONAI and loads its model (4.6 s, MONAI's import alone 3.3 s), so workers are used for large
# batches only (``processes_for``).
PROCESS_MIN_ITEMS = 200


#: A slide file at least this large counts as :data:`PROCESS_MIN_ITEMS` items of work, which
#: the worker processes share (:class:`Schedule`); smaller slides (a cut-out region) run in this
#: process.  Measured (scripts/bench_batch.py, 2 CPUs): the 64 MB synthetic pyramid (JPEG q80,
#: 34% tissue) holds 1,167 ``path-lung-tissue`` tiles; in one process 11.0 s end to end (tiles
#: 5.9 s), over two worker processes 8.7 s (tiles 4.0 s).  Below that size the workers'
#: start-up eats the gain.
SPREAD_MIN_SLIDE_BYTES = 64 << 20


def work_items(units) -> int:
    """Items for :func:`processes_for`: a large slide counts as :data:`PROCESS_MIN_ITEMS`."""
    n = 0
    for c, _ in units:
        n += PROCESS_MIN_ITEMS if c.kind == "slide" and _bytes(c.payload) >= SPREAD_MIN_SLIDE_BYTES else 1
    return n


def _bytes(path) -> int:
    """Size of a slide file, or of the files of a WSI DICOM folder."""
    try:
        if os.path.isdir(path):
            return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
        return os.path.getsize(path)
    except OSError:
        return 0


def processes_for(n_units: int, requested: int = 0, device: str | None = "auto", echo=None) -> int:
    """Worker processes for ``--engine local``: ``requested`` when given, else one per CPU for
    batches of at least :data:`PROCESS_MIN_ITEMS` items (:func:`work_items`; 1 below:
    start-up would dominate), and 1 when the models run on a GPU (``device``, as
    ``--device`` resolves it): each worker would hold its own CUDA context and copy of the
    model on the one card.  That choice is said in one line (``echo``, default stderr)."""
    if requested:
        return max(1, requested)
    cpus = os.cpu_count() or 1
    if cpus < 2 or n_units < PROCESS_MIN_ITEMS:
        return 1
    if (device or "auto").lower() != "cpu":
        from ..inference.device import resolve_device  # torch: only for a batch this large

        kind = resolve_device(device).type
        if kind != "cpu":
            import sys

            (echo or (lambda m: print(m, file=sys.stderr)))(
                f"note: one worker process, not {cpus}: the models run on the GPU ({kind}) and one process per "
                "CPU would each hold its own GPU context and copy of the model; give --processes N to choose")
            return 1
    return cpus


_WORKER_PIPE = None


def _worker_init(model_ids, settings: Settings) -> None:
    import dataclasses
    import signal

    global _WORKER_PIPE
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the workers
    flush_audit_on_sigterm()
    stop_with_parent()  # before the imports and the model: a parent gone by then ends it now
    lean_imports(model_ids, settings.explain is not None)
    _WORKER_PIPE = Pipeline(model_ids, dataclasses.replace(settings, torch_threads=1), writers=1, depth=2)


def stop_with_parent() -> None:
    """End this worker process with SIGTERM (its held audit events appended first:
    :func:`flush_audit_on_sigterm`) once the batch process that spawned it is gone, also when
    that was killed outright (SIGKILL, the OOM killer) and none of its cleanup ran.  Without it
    the workers stayed for ever, each with its model loaded: their task queue's pipe is held
    open by the workers themselves, so they never see its end.  Linux: the kernel sends the
    signal (prctl PR_SET_PDEATHSIG; it follows the parent's thread that spawned the worker,
    the one iterating :func:`run_local_processes`, alive until the pool is shut down).
    Elsewhere: a thread waits on the parent's sentinel (readable once the parent has exited)."""
    import multiprocessing as mp
    import signal
    import sys
    import threading
    import time

    parent = mp.parent_process()  # a spawned worker's parent; None in a process started otherwise
    ppid = parent.pid if parent is not None else os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        try:
            armed = ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
        except (OSError, AttributeError):  # no libc symbol (a static build): the thread below
            armed = False
        if armed:
            if os.getppid() != ppid:  # the parent died before the request was made: no signal comes
                os.kill(os.getpid(), signal.SIGTERM)
            return

    def watch():
        if parent is not None:
            parent.join()
        else:
            while os.getppid() == ppid:
                time.sleep(1.0)
        # to the main thread, so that a read it is blocked in ends and the handler runs now
        if hasattr(signal, "pthread_kill"):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
        else:  # Windows: ends the process at once
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


def flush_audit_on_sigterm() -> None:
    """A worker stopped with SIGTERM (the local engine's Ctrl-C; Ray stopping its workers)
    first appends the audit events its chunk holds (``audit.flush_held_now``), then does what
    SIGTERM did before: the handler that was there (Ray's), else exits as SIGTERM would have
    (status 128 + 15)."""
    import signal

    # imported now, not in the handler: a worker stopped while loading its model sometimes
    # lived on (3 stops in 14 here, none in 14 since).  The likely cause: the pool sends SIGTERM
    # twice (the batch, then the pool's own clean-up); the second handler, run while the first
    # imported the module, failed on the half-imported module, and that error, raised inside an
    # import MONAI guards (optional_import), was swallowed.
    from ..privacy.audit import flush_held_now

    prev = signal.getsignal(signal.SIGTERM)
    stopping = []

    def on_term(signum, frame):
        if stopping:  # a second SIGTERM while the first is handled: that one exits
            return
        stopping.append(signum)
        try:
            flush_held_now()
        finally:  # exits whatever the flush did
            if callable(prev):
                prev(signum, frame)
            elif prev != signal.SIG_IGN:
                os._exit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread of the process: leave SIGTERM as it is
        pass


def _worker_ready() -> bool:
    return True


def _worker_task(kind: str, args: tuple):
    return _WORKER_PIPE.task(kind, args)


def run_local_processes(units, model_ids, settings: Settings, processes: int, chunk: int = 8):
    """Yield rows for ``units`` from ``processes`` spawned worker processes, each running the
    same :class:`Pipeline` (models loaded once per process, one torch thread each) on the
    tasks of a :class:`Schedule` (chunks of ``chunk`` items; a slide's tiles in parts over all
    workers); at most two tasks per process in flight.  A worker that dies ends the batch with
    one line (never a hang; the rows so far are committed and the same command resumes);
    closing the generator (Ctrl-C) stops the workers at once."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ex = ProcessPoolExecutor(processes, mp_context=mp.get_context("spawn"),
                             initializer=_worker_init, initargs=(list(model_ids), settings))
    sched = Schedule(units, chunk, settings.slide_tiles_per_task, processes)
    inflight: dict = {}
    # Start every worker now: the pool spawns a process only when no worker is idle at a
    # submit, so a lone slide (one planning task) would get one worker, and the second would
    # start only when the tiles go out and join after its imports, when most were done.
    for f in [ex.submit(_worker_ready) for _ in range(processes)]:
        f.add_done_callback(lambda f: f.exception())

    def fill():
        while len(inflight) < 2 * processes:
            t = sched.next_task()
            if t is None:
                return
            inflight[ex.submit(_worker_task, t[0], t[1])] = t

    try:
        fill()
        while inflight:
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for f in done:
                t = inflight.pop(f)
                try:
                    result = f.result()  # a bad item is a failed row inside the worker already
                except BrokenProcessPool as e:
                    raise UserError(f"a batch worker process died ({e}); the rows written so far "
                                    "are kept: run the same command again to resume") from None
                except Exception as e:  # noqa: BLE001 - the worker itself failed: one line
                    raise UserError(f"a batch worker process failed ({type(e).__name__}: {e}); the "
                                    "rows written so far are kept: run the same command again "
                                    "to resume") from None
                yield from sched.done(t, result)
            fill()
    finally:
        # concurrent.futures has no public way to stop running workers before Python 3.14
        # (terminate_workers); without it a Ctrl-C would wait for every chunk in flight
        for p in list(getattr(ex, "_processes", {}).values()):
            p.terminate()
        ex.shutdown(wait=True, cancel_futures=True)


# =========================================================================== ray
def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def init_ray(address: str | None = None, temp_dir: str | None = None, num_cpus: int | None = None):
    """Join ``address`` (or ``RAY_ADDRESS``) or start Ray in this process: usage statistics
    off, no dashboard, bound to 127.0.0.1.  Returns (connected by this call, Ray's temporary
    folder when this call started Ray in-process, to remove after ``ray.shutdown()``)."""
    try:
        import ray
    except ImportError:
        raise UserError(RAY_MISSING) from None
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if ray.is_initialized():
        return False, None
    with _keeping_sigterm_handler():
        return _init_ray(ray, address, temp_dir, num_cpus)


@contextmanager
def _keeping_sigterm_handler():
    """``ray.init`` replaces the SIGTERM handler with its own (``sys.exit(15)``): ``batch``'s
    (SIGTERM does what Ctrl-C does: workers stopped, run ``interrupted``, exit 130) is put back
    after it.  Ray's stays where nobody had set one (a library caller's own process)."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if callable(before):
            signal.signal(signal.SIGTERM, before)


def _init_ray(ray, address, temp_dir, num_cpus):
    address = address or os.environ.get("RAY_ADDRESS") or None
    kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address:
        host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
        if host in ("127.0.0.1", "localhost", "::1"):
            _loopback_only()  # a cluster on this machine's loopback: do not rewrite its address
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"cannot join the Ray cluster at {address}: {_one_line(e)}") from None
        return True, None
    import tempfile

    created = temp_dir is None
    temp_dir = temp_dir or tempfile.mkdtemp(prefix="ia-ray-", dir="/tmp")
    _loopback_only()
    # Ray 2.60 turns token authentication on for a new local cluster and logs a warning that
    # says so ("... Set RAY_AUTH_MODE=disabled to opt out"): a line in the command's output
    # about a setting that is as it should be.  Its logger is quiet for this ray.init only.
    auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level, auth_log.level = auth_log.level, logging.ERROR
    try:
        _own_auth_token(temp_dir)
        with _without_dashboard_head():
            try:
                ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", _temp_dir=temp_dir,
                         _system_config=dict(START_CONFIG), **kw)
            finally:
                auth_log.level = level
    except BaseException:  # Ray did not start: its folder (and the token in it) goes now
        if created:
            import shutil

            shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return True, temp_dir


_TOKEN_NAME = "auth_token"  # in the run's Ray temporary folder: removed with it (stop_ray)
_token_path_set: str | None = None  # the RAY_AUTH_TOKEN_PATH this process set last


def _own_auth_token(temp_dir: str) -> None:
    """Ray 2.60 turns token authentication on for a cluster ``ray.init`` starts and, finding no
    token, writes a new one to ``~/.ray/auth_token``: outside the user's folders, left after
    the run, and an "internal error (OSError: Read-only file system)" where the home cannot be
    written (locked-down workstations, containers).  Where the user has set neither a token
    (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token) nor a mode (RAY_AUTH_MODE), this
    run's cluster gets a random token of its own in its temporary folder (mode 0600; Ray's
    processes inherit RAY_AUTH_TOKEN_PATH): authentication stays on, nothing goes into the home.
    A path this function set for an earlier run (its folder removed by :func:`stop_ray`) is
    replaced, never left pointing at a missing file."""
    import secrets

    global _token_path_set
    if _token_path_set and os.environ.get("RAY_AUTH_TOKEN_PATH") == _token_path_set \
            and not os.path.exists(_token_path_set):
        del os.environ["RAY_AUTH_TOKEN_PATH"]  # an earlier run's in this process, gone with its folder
    if any(os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        return
    if os.path.isfile(os.path.expanduser(os.path.join("~", ".ray", "auth_token"))):
        return  # the user's own token: Ray uses it as before
    path = os.path.join(temp_dir, _TOKEN_NAME)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    os.environ["RAY_AUTH_TOKEN_PATH"] = _token_path_set = path


@contextmanager
def _without_dashboard_head():
    """Let ``ray.init`` skip the dashboard head process.

    With ``include_dashboard=False`` Ray 2.60 still starts a dashboard head (a Python process
    loading only its usage-statistics module, without web server) and polls the GCS every 0.1 s
    until that process has published its address: 0.5 s of every ``ray.init`` here, 2.26-2.27 ->
    1.74-1.76 s (``bench_batch.py --ray-start``).  Usage statistics are off
    (``RAY_USAGE_STATS_ENABLED=0``), so the process does nothing else than watch the GCS; Ray
    has no setting to leave it out (``Node.start_head_processes`` calls ``start_api_server``
    unconditionally), hence the patch, for the duration of this ``ray.init`` only, of the
    Ray version pinned in pyproject.toml.  If Ray's private class moves, ``ray.init`` runs
    unchanged.  Checked by ``test_ray_in_process_listens_on_loopback_only_and_stops`` (no
    dashboard process; Ray's class restored after ``ray.init``)."""
    try:
        from ray._private.node import Node

        original = Node.__dict__["start_api_server"]
    except (ImportError, KeyError):  # another Ray version: start it as Ray does
        yield
        return
    Node.start_api_server = lambda self, **kw: None
    try:
        yield
    finally:
        Node.start_api_server = original


#: Ray settings for the Ray this command starts (``ray.init``'s ``_system_config``).  The raylet
#: connects to its own object store right after creating it; when the store's socket is not
#: listening yet (one start in two here, raylet log) it retries after
#: ``raylet_client_connect_timeout_milliseconds``, 1 s by default: ``ray.init`` took 3.3-3.4 s
#: instead of 2.3-2.4.  Retrying every 50 ms, 200 times, keeps Ray's own 10-s budget (10 x 1 s) for
#: a raylet that is really slow, and the clients of that raylet (workers) use the same budget.
START_CONFIG = {"raylet_client_connect_timeout_milliseconds": 50, "raylet_client_num_connect_attempts": 200}


def _loopback_only() -> None:
    """Keep Ray on 127.0.0.1.  ray.init turns "127.0.0.1" (a node address, or the host of a
    cluster address) into the machine's reachable address (services.resolve_ip_for_localhost)
    unless "cluster mode" is off, which is what Ray itself does on macOS/Windows
    (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read into ray_constants at import).  With the node
    address 127.0.0.1, Ray's gRPC servers bind to 127.0.0.1 (ray-project/ray#55484).
    Checked by tests/test_batch.py (listening sockets)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def run_ray(units, model_ids, settings: Settings, address: str | None = None, chunk: int = 16,
            actors: int | None = None, depth: int = 4, on_start=None):
    """Yield rows for ``units`` from Ray tasks (decoding) and actors (models)."""
    import ray

    started, temp_dir = init_ray(address)
    try:
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        # default: one actor per GPU; without GPUs one per CPU of each node, one torch thread
        # each, like the local engine's worker processes (measured on 2 CPUs, 1,000 films: one
        # actor per two CPUs ran 64 films/s once started, one per CPU about 90)
        n_act = actors or (gpus if gpus else
                           sum(max(1, int(n.get("Resources", {}).get("CPU", 1))) for n in nodes))
        # --actors above the GPU count shares each GPU between actors (fractional GPUs): a
        # small model leaves a GPU idle while one actor preprocesses and writes on the CPU
        opts = {"num_gpus": min(1.0, gpus / n_act), "num_cpus": 0.5} if gpus else {"num_cpus": 0.5}
        if n_act > 1:
            opts["scheduling_strategy"] = "SPREAD"
        # One remote pipeline per actor: the models load once there, then every chunk runs
        # through it (decoded chunks arrive as object refs, resolved by Ray).
        Worker = ray.remote(max_restarts=0)(_RayWorker)
        workers = [Worker.options(**opts).remote(list(model_ids), settings, depth) for _ in range(n_act)]
        decode = ray.remote(num_cpus=0.5, max_retries=0)(_decode_chunk)
        try:
            ray.get([w.ready.remote() for w in workers])
        except Exception as e:  # noqa: BLE001 - e.g. a model id not known on a node: one line
            for w in workers:
                ray.kill(w)
            raise UserError(f"the Ray model actors did not start: {_one_line(e)}") from None
        if on_start:
            on_start(f"ray: {len(nodes)} node(s), {int(res.get('CPU', 0))} CPU(s), {gpus} GPU(s); "
                     f"{n_act} model actor(s)")
        sched = Schedule(units, chunk, settings.slide_tiles_per_task, n_act)
        inflight: dict = {}
        load = {i: 0 for i in range(n_act)}

        def fill():
            while len(inflight) < 2 * n_act + 1:
                t = sched.next_task()
                if t is None:
                    return
                i = min(load, key=load.get)
                kind, args, _ = t
                if kind == "units" and gpus:
                    # GPU actors get their chunks decoded by CPU tasks, so the GPU never waits on
                    # a decoder; CPU actors (one per CPU) decode their own chunk: a task there
                    # only moves the pixels through the object store (measured on 2 CPUs, 1,000
                    # films: 66-69 films/s with decode tasks, 75-77 without)
                    ref = workers[i].process.remote(args[0], decode.remote([u[0] for u in args[0]]))
                else:
                    ref = workers[i].task.remote(kind, args)
                inflight[ref] = (i, t)
                load[i] += 1

        try:
            fill()
            while inflight:
                done, _ = ray.wait(list(inflight), num_returns=1)
                for ref in done:
                    i, t = inflight.pop(ref)
                    load[i] -= 1
                    try:
                        result = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - a lost worker or task: not done
                        raise UserError(f"a Ray worker failed: {_one_line(e)}") from None
                    yield from sched.done(t, result)
                fill()
        finally:  # stopped (Ctrl-C) or done: unfinished chunks have no rows, a re-run does them
            for w in workers:
                ray.kill(w)
    finally:
        if started:
            stop_ray(temp_dir)


def stop_ray(temp_dir: str | None = None) -> None:
    """``ray.shutdown()`` without its idle second, then remove Ray's temporary folder (when this
    process started Ray).

    ``ray.shutdown`` stops the processes ``ray.init`` started one kind at a time, each with SIGTERM
    and a grace of one second before SIGKILL: the raylet, the GCS, then the autoscaler monitor
    and the others.  The monitor's SIGTERM handler first reports its "failure" to the GCS, which is
    already gone, so it hangs until the grace ends: one second of every ``batch --engine ray`` that
    started its own Ray (cProfile: 1.05 of shutdown's 1.34-1.37 s were that wait; the same order
    problem for ``ray stop``: ray-project/ray#30672).  The monitor holds nothing (Ray started here
    has no autoscaling), so it is killed first; shutdown then takes 0.36-0.37 s.  Only processes
    this driver started are in that table (it is empty after joining a cluster, so a joined
    cluster is never touched).  Ray's private table is read defensively: if it moves, this is a
    plain ``ray.shutdown()``."""
    import ray

    try:
        from ray._private import worker

        node = worker._global_node
        monitors = list(node.all_processes.get("monitor", [])) if node is not None else []
    except Exception:  # noqa: BLE001 - another Ray version: the plain shutdown below
        monitors = []
    for info in monitors:
        try:
            info.process.kill()
            info.process.wait(timeout=1)
        except Exception:  # noqa: BLE001 - already gone, or not reaped in time: Ray retries
            pass
    ray.shutdown()
    if temp_dir:
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)
    if _token_path_set and os.environ.get("RAY_AUTH_TOKEN_PATH") == _token_path_set \
            and not os.path.exists(_token_path_set):
        del os.environ["RAY_AUTH_TOKEN_PATH"]  # gone with the folder: a cluster joined later uses its own


def _decode_chunk(cands):
    return [_pack(decode_timed(c)) for c in cands]


# A Volume holds a threading.Lock (progressive loading), which cannot be pickled: it crosses
# the object store as its attributes and gets a fresh lock on the other side.
def _pack(t):
    vol, err, s = t
    if vol is None:
        return t
    d = dict(vol.__dict__)
    d.pop("_lock", None)
    return ("volume", d), err, s


def _unpack(t):
    vol, err, s = t
    if isinstance(vol, tuple) and vol and vol[0] == "volume":
        import threading

        from ..volume import Volume

        v = Volume.__new__(Volume)
        v.__dict__.update(vol[1])
        v._lock = threading.Lock()
        vol = v
    return vol, err, s


class _RayWorker:
    """The model actor (wrapped with ``ray.remote`` in :func:`run_ray`)."""

    def __init__(self, model_ids, settings: Settings, depth: int):
        import logging
        import warnings

        warnings.filterwarnings("ignore", module=r"(pydicom|monai)(\..*)?")
        logging.getLogger("monai").setLevel(logging.ERROR)
        lean_imports(model_ids, settings.explain is not None)
        flush_audit_on_sigterm()
        if not settings.torch_threads:  # several actors per node: one torch thread each
            import dataclasses

            settings = dataclasses.replace(settings, torch_threads=1)
        self.pipe = Pipeline(model_ids, settings, depth=depth)

    def ready(self) -> bool:
        return True

    def process(self, units, decoded):
        """Rows of ``units`` from their decoded volumes (a decode task's result: GPU actors)."""
        return self.pipe.rows(zip(units, map(_unpack, decoded)))

    def task(self, kind: str, args: tuple):
        """A :class:`Schedule` task (items decoded here, or a step of a spread slide)."""
        return self.pipe.task(kind, args)


def _one_line(e) -> str:
    s = str(e).strip()
    return " ".join(ln.strip() for ln in s.splitlines() if ln.strip())[:500]


__all__ = ["Pipeline", "run_local", "run_ray", "init_ray", "stop_ray", "ray_available", "RAY_MISSING"]
