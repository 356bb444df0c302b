"""The site key: one secret per installation for keyed pseudonyms (no Qt).

De-identification maps UIDs and Patient IDs with it, and the audit trail names patients
and instances by it, so that the same value gives the same pseudonym months apart and
nobody without the key can reverse or recompute it (HMAC-SHA256, RFC 2104, from the
standard library: no hand-written crypto).

The key is 32 random bytes (``secrets``), kept hex-encoded in ``config_dir()/site.key``,
mode 0600, created on first use.  Creation is race-free: the key is written whole to a
temporary file and *linked* into place, which fails if another process got there first;
then everybody reads the one file that won.  Losing the key means new exports no longer
match old ones and old audit pseudonyms can no longer be recomputed: back it up with the
config folder; ``key_fingerprint()`` tells two keys apart without showing them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import threading
from pathlib import Path

from ..errors import UserError
from ..userdirs import config_dir

KEY_FILE = "site.key"
KEY_BYTES = 32

_lock = threading.Lock()
_cache: dict[str, bytes] = {}


def key_path() -> Path:
    """Where the site key lives (``config_dir()/site.key``)."""
    return config_dir() / KEY_FILE


def site_key() -> bytes:
    """The site key (32 bytes), created on first use (mode 0600).

    Raises ``UserError`` (one line) when the key file exists but cannot be read or is not a key:
    a damaged key is never silently replaced, since that would break every mapping made with it."""
    path = key_path()
    cache_key = str(path)
    with _lock:
        key = _cache.get(cache_key)
        if key is not None:
            return key
        if not path.exists():
            _create(path)
        key = _read(path)
        _cache[cache_key] = key
        return key


def _create(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_bytes(KEY_BYTES).hex() + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # atomic, fails if another process created the key first
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the site key {path}: {e.strerror or e}") from e


def _read(path: Path) -> bytes:
    try:
        st = path.stat()
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the site key {path}: {getattr(e, 'strerror', None) or e}") from e
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        try:  # tighten a key someone made readable by others (e.g. copied with a loose umask)
            os.chmod(path, 0o600)
        except OSError:
            pass
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise UserError(f"the site key {path} is damaged (not {KEY_BYTES} hex-encoded bytes); "
                        f"restore it from a backup, or move it away to start a new one "
                        f"(earlier pseudonyms will then no longer match)")
    return key


def key_fingerprint() -> str:
    """A short public name of the key (16 hex digits), to tell two keys apart without showing them."""
    return hashlib.sha256(b"imaging-assist site key fingerprint\x00" + site_key()).hexdigest()[:16]


def keyed_digest(value: str | bytes, kind: str) -> bytes:
    """HMAC-SHA256 of ``value`` under the site key, separated by ``kind`` (e.g. ``"patient-id"``,
    ``"uid"``) so that the same text in two roles gives unrelated digests.  Surrounding spaces
    (DICOM padding) are ignored in text values."""
    if not kind or "\x00" in kind:
        raise ValueError("kind must be a non-empty name without NUL")
    data = value if isinstance(value, bytes) else text_bytes(str(value).strip())
    return hmac.new(site_key(), kind.encode("utf-8") + b"\x00" + data, hashlib.sha256).digest()


def text_bytes(text: str) -> bytes:
    """``text`` as UTF-8 bytes for hashing, also when it holds lone surrogates: a file name that is
    not UTF-8 (b'M\\xfcller.jpeg' from a Latin-1 system) comes from the OS as 'M\\udcfcller.jpeg'
    and is hashed as its own bytes (surrogateescape, as ``os.fsencode`` on Linux, but the same on
    every machine whatever its locale); another lone surrogate (from JSON text, say) as its UTF-8
    form (surrogatepass).  Valid text gives its plain UTF-8 bytes, so every digest made before
    stays the same."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def pseudonym(value: str, kind: str) -> str:
    """A keyed pseudonym of ``value`` in role ``kind``: 32 hex digits (128 bits of the HMAC),
    the same for the same key, value and kind; not reversible and not recomputable without the key."""
    return keyed_digest(value, kind)[:16].hex()
