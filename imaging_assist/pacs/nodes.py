"""PACS nodes and our own DICOM settings, kept in ``config_dir()/pacs.json`` (mode 0600).

A node is DIMSE (AE title, host, port, optional TLS) or DICOMweb (base URL, optional basic or
bearer authentication).  Wherever a node is named (``--node``) we accept a configured name,
``AET@host:port`` or an ``http(s)://`` base URL.  Secrets (passwords, tokens, TLS key paths stay
visible, they are not secrets) never appear in ``repr``, ``display()`` or any message: the
only place they are written is the 0600 config file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import UserError
from ..jsonvalues import is_number
from ..userdirs import config_dir, locked

DEFAULT_AE = "IMAGING_ASSIST"
DEFAULT_STORAGE_PORT = 11113
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash/control
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_TIMEOUT = 86400  # seconds; a larger (or infinite) one cannot be given to a socket


class PacsError(UserError):
    """A PACS operation failed; the message is the one line the user sees."""


def check_ae(ae: str) -> str:
    ae = (ae or "").strip()
    if not _AE_RE.match(ae):
        raise PacsError(f"invalid AE title {ae!r}: 1-16 printable characters, no backslash")
    return ae


def check_port(port) -> int:
    try:
        if isinstance(port, bool):
            raise TypeError
        p = int(port)
    except (TypeError, ValueError, OverflowError):
        raise PacsError(f"invalid port {port!r}: a whole number 1-65535") from None
    if not 0 < p < 65536:
        raise PacsError(f"invalid port {p}: must lie between 1 and 65535")
    return p


@dataclass
class Node:
    """One PACS.  ``kind`` is ``"dimse"`` or ``"dicomweb"``."""
    name: str
    kind: str
    ae_title: str = ""
    host: str = ""
    port: int = 0
    tls_ca: str = ""          # DIMSE over TLS: CA bundle (enables TLS), client cert and key
    tls_cert: str = ""
    tls_key: str = ""
    url: str = ""
    auth: str = "none"        # DICOMweb: none | basic | bearer
    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    timeout: float = 30.0

    @property
    def is_dimse(self) -> bool:
        return self.kind == "dimse"

    def display(self) -> str:
        """How the node is shown everywhere: never a password or token."""
        if self.is_dimse:
            tls = " TLS" if self.tls_ca else ""
            return f"{self.ae_title}@{self.host}:{self.port}{tls}"
        auth = ""
        if self.auth == "basic":
            auth = f" (basic auth, user {self.username}, password ***)"
        elif self.auth == "bearer":
            auth = " (bearer token ***)"
        return f"{self.url}{auth}"

    def label(self) -> str:
        return f"{self.name} [{self.display()}]" if self.name else self.display()

    def __repr__(self) -> str:  # never the secrets, even in a debugger or a log record
        return f"Node({self.name!r}, {self.kind}, {self.display()!r})"

    __str__ = label

    def to_dict(self) -> dict:
        return asdict(self)

    def public_dict(self) -> dict:
        d = {"name": self.name, "kind": self.kind}
        if self.is_dimse:
            d.update(ae_title=self.ae_title, host=self.host, port=self.port, tls=bool(self.tls_ca))
        else:
            d.update(url=self.url, auth=self.auth)
            if self.auth == "basic":
                d["username"] = self.username
        return d

    def validate(self) -> Node:
        if self.kind == "dimse":
            self.ae_title = check_ae(self.ae_title)
            if not self.host.strip():
                raise PacsError(f"node {self.name or '?'}: host missing")
            self.port = check_port(self.port)
            for p in (self.tls_ca, self.tls_cert, self.tls_key):
                if p and not Path(p).is_file():
                    raise PacsError(f"node {self.name or '?'}: TLS file not found: {p}")
        elif self.kind == "dicomweb":
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise PacsError(f"invalid DICOMweb URL {self.url!r}: must start with http:// or https://")
            if parts.username or parts.password:
                raise PacsError("put DICOMweb credentials in the node's auth settings, not in the URL")
            self.url = self.url.rstrip("/")
            if self.auth not in ("none", "basic", "bearer"):
                raise PacsError(f"unknown auth {self.auth!r}: none, basic or bearer")
            if self.auth == "basic" and not self.username:
                raise PacsError("basic auth needs a user name")
            if self.auth == "bearer" and not self.token:
                raise PacsError("bearer auth needs a token")
        else:
            raise PacsError(f"unknown node kind {self.kind!r}: dimse or dicomweb")
        t = self.timeout
        if not is_number(t, 0, MAX_TIMEOUT) or t == 0:
            raise PacsError(f"timeout must be positive, at most {MAX_TIMEOUT} seconds (not {t!r})")
        return self


@dataclass
class Settings:
    ae_title: str = DEFAULT_AE          # our own AE title (calling AE, C-MOVE destination)
    storage_port: int = DEFAULT_STORAGE_PORT  # our Storage SCP's port during a C-MOVE
    nodes: dict[str, Node] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"ae_title": self.ae_title, "storage_port": self.storage_port,
                "nodes": {k: v.to_dict() for k, v in self.nodes.items()}}


def config_path() -> Path:
    return config_dir() / "pacs.json"


def load_settings() -> Settings:
    path = config_path()
    if not path.exists():
        return Settings()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        nodes = {}
        for name, d in (data.get("nodes") or {}).items():
            known = {k: v for k, v in d.items() if k in Node.__dataclass_fields__}
            known["name"] = name
            for k, v in known.items():  # types checked here, not when the value is first used
                want = Node.__dataclass_fields__[k].type
                if (want == "str" and not isinstance(v, str)) or \
                        (want == "int" and (isinstance(v, bool) or not isinstance(v, int))):
                    raise PacsError(f"cannot read PACS settings {path}: node {name!r}: {k} is not "
                                    f"{'text' if want == 'str' else 'a whole number'}")
            nodes[name] = Node(**known).validate()
        return Settings(ae_title=check_ae(data.get("ae_title", DEFAULT_AE)),
                        storage_port=check_port(data.get("storage_port", DEFAULT_STORAGE_PORT)),
                        nodes=nodes)
    except (OSError, ValueError, TypeError, AttributeError, RecursionError) as e:
        raise PacsError(f"cannot read PACS settings {path}: {e}") from None
    except PacsError as e:  # a value from the file (a TLS path) may hold a line break
        raise PacsError(" ".join(str(e).split())) from None


def save_settings(settings: Settings) -> Path:
    """Write atomically with mode 0600 (the file may hold passwords and tokens)."""
    path = config_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".pacs-", suffix=".json", dir=path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(settings.to_dict(), f, indent=2)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        os.chmod(path, 0o600)
    except OSError as e:  # a config folder below a file, not ours, a full disk: one line, not a traceback
        raise PacsError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def _settings_locked():
    """Hold the settings file's lock for a read-modify-write: a node another process (a second
    window, the CLI) adds or removes between this one's read and write is otherwise lost.
    Held for 10 s, or a config folder that cannot be written: one PacsError line."""
    return locked(config_path(), error=PacsError)


def add_node(node: Node) -> Path:
    if not _NAME_RE.match(node.name or ""):
        raise PacsError(f"invalid node name {node.name!r}: letters, digits, '.', '_' or '-'")
    node = node.validate()
    with _settings_locked():
        s = load_settings()
        s.nodes[node.name] = node
        return save_settings(s)


def remove_node(name: str) -> Path:
    with _settings_locked():
        s = load_settings()
        if name not in s.nodes:
            raise PacsError(f"no configured node named {name!r} (see `imaging-assist pacs nodes`)")
        del s.nodes[name]
        return save_settings(s)


def update_settings(ae_title: str | None = None, storage_port: int | None = None) -> Settings:
    """Set our AE title and/or C-MOVE storage port (checked) under the settings' lock, keeping
    the nodes another process saved meanwhile; the settings as saved (as read when nothing is
    given)."""
    with _settings_locked():
        s = load_settings()
        if ae_title is None and storage_port is None:
            return s
        if ae_title is not None:
            s.ae_title = check_ae(ae_title)
        if storage_port is not None:
            s.storage_port = check_port(storage_port)
        save_settings(s)
        return s


_ADHOC_RE = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[0-9a-fA-F:]+\]|[^:@\s]+):(?P<port>\d{1,5})$")


def parse_node(text: str, settings: Settings | None = None) -> Node:
    """A configured name, ``AET@host:port`` (DIMSE) or an ``http(s)://`` base URL (DICOMweb)."""
    text = (text or "").strip()
    settings = settings if settings is not None else load_settings()
    if text in settings.nodes:
        return settings.nodes[text]
    if text.lower().startswith(("http://", "https://")):
        return Node(name="", kind="dicomweb", url=text).validate()
    m = _ADHOC_RE.match(text)
    if m:
        return Node(name="", kind="dimse", ae_title=m["ae"], host=m["host"].strip("[]"),
                    port=int(m["port"])).validate()
    names = ", ".join(sorted(settings.nodes)) or "none configured"
    raise PacsError(f"unknown node {text!r}: give a configured name ({names}), AET@host:port "
                    f"or an http(s):// DICOMweb URL")
