"""Real Orthanc peers for the PACS tests (session-scoped; started once, stopped at the end).

The start-up itself is :class:`imaging_assist.pacs.testing.Orthanc`, shared with
``scripts/bench_pacs.py``.  ``orthanc`` holds the 140-slice CT phantom, a 4-file JPEG 2000 MR
study and a 1-file RGB secondary capture (three patients, so every query filter can be shown to
select one study and leave out the others).  ``orthanc_noget`` is a second Orthanc whose modality
entry for our AE has ``AllowGet: false`` (a node without C-GET) and holds 3 CT slices.

Test modules use them with ``from _orthanc import orthanc, orthanc_noget, pacs_home  # noqa``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import CT_PHANTOM, DICOM, need

MR_J2K = DICOM / "mr_enhanced_siemens_series_jpeg2000_lossless_derived"
SC_RGB = DICOM / "rgb_jpeg_lossless_secondary_capture"


def ct_files() -> list[Path]:
    files = sorted(need(CT_PHANTOM).glob("*.dcm"))
    assert len(files) == 140, f"expected the 140-slice CT phantom in {CT_PHANTOM}"
    return files


def mr_files() -> list[Path]:
    return sorted(need(MR_J2K).glob("*.dcm"))


def sc_files() -> list[Path]:
    return sorted(need(SC_RGB).glob("*.dcm"))


def _start(tmp_path_factory, name: str, **kw):
    """A fresh Orthanc of its own (not shared; empty), started; the caller stops it
    (used by tests/test_audit.py)."""
    from imaging_assist.pacs.testing import Orthanc
    try:
        return Orthanc(workdir=str(tmp_path_factory.mktemp(name)), **kw).start()
    except RuntimeError as e:
        pytest.fail(f"could not start Orthanc: {e}")


# One Orthanc of each kind per test session.  The fixtures are imported into several test
# modules, and pytest makes one fixture instance per module that defines (imports) it; the
# instances share the server through this cache, so the CT is stored once per session.  Every
# instance stops it at the end of the session (stop() is idempotent).
_SHARED: dict = {}


def _shared(name: str, tmp_path_factory, upload, **kw):
    if name not in _SHARED:
        o = _start(tmp_path_factory, name, **kw)
        try:
            o.upload(upload())
        except Exception:
            o.stop()
            raise
        _SHARED[name] = o
    return _SHARED[name]


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    o = _shared("orthanc", tmp_path_factory, lambda: ct_files() + mr_files() + sc_files())
    yield o
    o.stop()


@pytest.fixture(scope="session")
def orthanc_noget(tmp_path_factory):
    o = _shared("orthanc-noget", tmp_path_factory, lambda: ct_files()[:3], allow_get=False,
                aet="NOGET")
    yield o
    o.stop()


@pytest.fixture(scope="session")
def orthanc_sink(tmp_path_factory):
    """An Orthanc that starts empty, for the tests that store into a PACS: what they send does
    not change what the shared `orthanc` holds (test_find_each_filter counts its studies)."""
    o = _shared("orthanc-sink", tmp_path_factory, lambda: [], aet="SINK")
    yield o
    o.stop()


def write_pacs_json(folder: Path, o, extra_nodes: dict | None = None) -> Path:
    """A pacs.json naming the session Orthanc as ``orthanc`` (DIMSE) and ``orthanc-web``."""
    folder.mkdir(parents=True, exist_ok=True)
    s = o.settings()
    s.nodes = {"orthanc": o.dimse_node("orthanc"), "orthanc-web": o.web_node("orthanc-web")}
    data = s.to_dict()
    data["nodes"].update(extra_nodes or {})
    p = folder / "pacs.json"
    p.write_text(json.dumps(data))
    os.chmod(p, 0o600)
    return p


@pytest.fixture
def pacs_home(orthanc, tmp_path, monkeypatch):
    """IMAGING_ASSIST_CONFIG_DIR with a pacs.json for the session Orthanc."""
    cfg = tmp_path / "cfg"
    write_pacs_json(cfg, orthanc)
    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(cfg))
    return cfg
