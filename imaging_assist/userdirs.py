"""The user's own folders, in one place for every room of the engine.

- ``config_dir()``: settings, PACS nodes, the site key, site operating points, user models.
- ``data_dir()``: what the program records (audit trail, prediction log, saved annotations).

platformdirs gives the platform's folders and honours ``XDG_CONFIG_HOME`` / ``XDG_DATA_HOME``
on Linux, so tests and sites can relocate both; ``IMAGING_ASSIST_CONFIG_DIR`` and
``IMAGING_ASSIST_DATA_DIR`` override them outright.  Nothing else imports platformdirs.
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "imaging-assist"


def config_dir() -> Path:
    """``IMAGING_ASSIST_CONFIG_DIR`` or the platformdirs user config folder (not created here)."""
    env = os.environ.get("IMAGING_ASSIST_CONFIG_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def data_dir() -> Path:
    """``IMAGING_ASSIST_DATA_DIR`` or the platformdirs user data folder (not created here)."""
    env = os.environ.get("IMAGING_ASSIST_DATA_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def write_json_atomic(path, data, *, fsync: bool = False, **dump_kwargs) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file in the same folder and
    ``os.replace``: a reader (or a crash) sees the old file or the new one, never half of one.
    The folder is created.  ``fsync`` flushes the bytes to disk before the rename."""
    import json
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, **dump_kwargs)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class locked:
    """``with locked(path):`` holds an exclusive ``fcntl.flock`` on ``path`` + ``.lock`` (created
    beside it, mode 0600), for a read-modify-write of a file two processes share (two windows,
    the GUI and the CLI).  Waits at most ``timeout_s``, then raises OSError with one line naming
    the lock (never a hang).  The lock goes with the holder's process, so a crash leaves nothing
    to clean up.  The same lock file serves every process of this user; inside one process,
    callers that may nest must not take the same lock twice (flock on a new descriptor would
    wait on itself).  With ``error`` (UserError, PacsError), a failure is that error's one line
    "cannot write FILE: why" rather than an OSError."""

    def __init__(self, path, timeout_s: float = 10.0, error: type[Exception] | None = None):
        path = Path(path)
        self.target = path
        self.path = path.with_name(path.name + ".lock")
        self.timeout_s = timeout_s
        self.error = error  # raised instead of OSError: "cannot write FILE: why" (a UserError's one line)
        self.fd = -1

    def __enter__(self):
        try:
            return self._take()
        except OSError as e:  # held too long, or a folder that cannot be written
            if self.error is None:
                raise
            raise self.error(f"cannot write {self.target}: {e.strerror or e}") from None

    def _take(self):
        import errno
        import fcntl
        import time

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        end = time.monotonic() + self.timeout_s
        delay = 0.0005
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) or time.monotonic() > end:
                    os.close(self.fd)
                    self.fd = -1
                    raise OSError(e.errno, f"{self.path} is held by another process for "
                                           f"{self.timeout_s:.0f} s: try again") from None
                time.sleep(delay)
                delay = min(2 * delay, 0.01)

    def __exit__(self, *exc):
        import fcntl

        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = -1
