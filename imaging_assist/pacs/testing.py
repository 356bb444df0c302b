"""A throw-away local Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) for the tests and
``scripts/bench_pacs.py``: temporary configuration and storage, free ports on 127.0.0.1, our
AE in its modality table (for C-MOVE), HTTP authentication on, stopped and deleted at the end.

Not used by the application itself; it lives in the engine so that the tests and the benchmark
share one start-up (no Qt, no pytest here).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ORTHANC = os.environ.get("IMAGING_ASSIST_ORTHANC", "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

# Site policy used by the tests: Orthanc refuses (ReceivedInstanceFilter) any instance whose
# PatientID is IA-REJECT, whatever the route (C-STORE, REST, STOW-RS): a "STOW rejected in part".
LUA_POLICY = """
function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.PatientID == 'IA-REJECT' then
    return false
  end
  return true
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """``with Orthanc(our_ae=..., our_port=...) as o:`` -> o.dimse_node(), o.web_node()."""

    def __init__(self, our_ae: str = "IA_TEST", our_port: int | None = None, allow_get: bool = True,
                 aet: str = "ORTHANC", user: str = "ia", password: str = "ia-test-secret",
                 workdir: str | None = None, tls: dict | None = None):
        for f in (ORTHANC, DICOMWEB_PLUGIN):
            if not os.path.exists(f):
                raise RuntimeError(f"{f} missing: install the Debian packages orthanc and "
                                   f"orthanc-dicomweb (scripts/test does)")
        self.aet, self.our_ae = aet, our_ae
        self.our_port = our_port or free_port()
        self.user, self.password = user, password
        self.allow_get = allow_get
        self.tls = tls  # {"cert": PEM, "key": PEM, "trusted": PEM}: DICOM TLS on the DICOM port
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="ia-orthanc-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen | None = None

    # ------------------------------------------------------------------ config
    def config(self) -> dict:
        lua = self.dir / "policy.lua"
        lua.write_text(LUA_POLICY)
        return {
            "Name": f"ia-test-{self.aet}",
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "storage"),
            "StorageCompression": False,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                         "Host": f"127.0.0.1:{self.http_port}", "Ssl": False},
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password},
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "DicomModalities": {
                "imaging-assist": {"AET": self.our_ae, "Host": "127.0.0.1", "Port": self.our_port,
                                   "AllowEcho": True, "AllowFind": True, "AllowMove": True,
                                   "AllowGet": self.allow_get, "AllowStore": True},
                "dcmtk": {"AET": "DCMTK", "Host": "127.0.0.1", "Port": self.our_port},
            },
            "DicomScpTimeout": 30,
            "DicomScuTimeout": 10,
            "LuaScripts": [str(lua)],
            "SaveJobs": False,
            "OverwriteInstances": False,
            "StableAge": 1,
            "ConcurrentJobs": 2,
            "HttpThreadsCount": 8,
            "DicomThreadsCount": 4,
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
            "StorageAccessOnFind": "Always",
            **({"DicomTlsEnabled": True, "DicomTlsCertificate": self.tls["cert"],
                "DicomTlsPrivateKey": self.tls["key"],
                "DicomTlsTrustedCertificates": self.tls["trusted"],
                "DicomTlsRemoteCertificateRequired": False} if self.tls else {}),
        }

    # ------------------------------------------------------------------ life cycle
    def start(self, timeout: float = 60.0) -> Orthanc:
        cfg = self.dir / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=2))
        log = open(self.dir / "orthanc.log", "wb")
        self.proc = subprocess.Popen([ORTHANC, str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.dir, start_new_session=True)
        log.close()
        t_end = time.monotonic() + timeout
        import requests
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start (code {self.proc.returncode}): "
                                   f"{self.log_tail()}")
            try:
                r = requests.get(f"{self.url}/system", auth=self.auth, timeout=2)
                if r.ok:
                    socket.create_connection(("127.0.0.1", self.dicom_port), timeout=2).close()
                    return self
            except (requests.RequestException, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc not ready within {timeout:g} s: {self.log_tail()}")

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def log_tail(self, n: int = 2000) -> str:
        try:
            return (self.dir / "orthanc.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ access
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.user, self.password)

    def dimse_node(self, name: str = "orthanc"):
        from .nodes import Node
        return Node(name=name, kind="dimse", ae_title=self.aet, host="127.0.0.1",
                    port=self.dicom_port, timeout=20).validate()

    def web_node(self, name: str = "orthanc-web"):
        from .nodes import Node
        return Node(name=name, kind="dicomweb", url=self.dicomweb_url, auth="basic",
                    username=self.user, password=self.password, timeout=30).validate()

    def settings(self):
        from .nodes import Settings
        return Settings(ae_title=self.our_ae, storage_port=self.our_port)

    def upload(self, files) -> list[str]:
        """POST each file to Orthanc's REST API (independent of our DIMSE/STOW code)."""
        import requests
        ids = []
        with requests.Session() as s:
            s.auth = self.auth
            for f in files:
                r = s.post(f"{self.url}/instances", data=Path(f).read_bytes(), timeout=60)
                r.raise_for_status()
                ids.append(r.json()["ID"])
        return ids

    def rest(self, path: str, method: str = "GET", **kw):
        import requests
        r = requests.request(method, f"{self.url}{path}", auth=self.auth, timeout=60, **kw)
        r.raise_for_status()
        return r.json() if r.content else None
