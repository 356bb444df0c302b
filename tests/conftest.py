import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IMAGING_ASSIST_SHARED", ROOT.parent / "shared" / "data"))
DICOM = SHARED / "dicom"
CT_PHANTOM = DICOM / "ct_head_phantom_philips" / "series202_STD_BRAIN_1MM_iDose"
NINE_SYNTAXES = SHARED / "variety" / "dcm_qa_ts_same_image_9_syntaxes"

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# The suite never writes into the user's own folders (audit trail, prediction log, PACS nodes,
# site key): XDG config and data homes point into one temporary folder for the whole run,
# inherited by every subprocess the tests start.  Tests that need their own set IMAGING_ASSIST_*.
# A process the run starts that imports this file again (multiprocessing's spawn imports the test
# module, and with it conftest; a pytest-xdist worker) keeps the run's folder and the XDG homes it
# was given (its test module's): only the process that made the folder removes it at the end.
_RUN_HOME_ENV = "IMAGING_ASSIST_TESTS_RUN_HOME"
_inherited = os.environ.get(_RUN_HOME_ENV)
if _inherited and Path(_inherited).is_dir():
    _USER_HOME, _OWN_USER_HOME = Path(_inherited), False
else:
    _USER_HOME, _OWN_USER_HOME = Path(tempfile.mkdtemp(prefix="imaging-assist-tests-")), True
    os.environ[_RUN_HOME_ENV] = str(_USER_HOME)
    os.environ["XDG_CONFIG_HOME"] = str(_USER_HOME / "config")
    os.environ["XDG_DATA_HOME"] = str(_USER_HOME / "data")


@pytest.fixture(autouse=True, scope="module")
def _own_user_folders(request):
    """Each test module gets its own XDG config and data homes (under the run's temporary
    folder): what one module saves (annotations per study, remembered slice positions, hanging
    protocols, the prediction log) never changes what another module sees, in any order."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    home = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_USER_HOME))
    old = {k: os.environ.get(k) for k in ("XDG_CONFIG_HOME", "XDG_DATA_HOME")}
    os.environ["XDG_CONFIG_HOME"] = str(home / "config")
    os.environ["XDG_DATA_HOME"] = str(home / "data")
    yield
    for k, v in old.items():
        os.environ[k] = v


def pytest_sessionfinish(session, exitstatus):
    """The GUI tests leave worker threads of their windows (model catalogue, drift monitor,
    slide tile readers): let them end before Python shuts down, as the app does at exit
    (``imaging_assist_ui.app.wait_for_workers``); then the run's user folders are removed."""
    import sys

    app = sys.modules.get("imaging_assist_ui.app")
    if app is not None:
        app.wait_for_workers(timeout=30.0)
    # the run's user folders (audit trails, site keys, prediction logs of every module) go with it:
    # each run left ~12 MB in the temporary folder
    import shutil

    if _OWN_USER_HOME:
        shutil.rmtree(_USER_HOME, ignore_errors=True)


def need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"test data missing: {path} (../shared/data must sit beside the repo)")
    return path


def dated_copy(src: Path, dst: Path, study_date: str) -> str:
    """The series in ``src`` copied into ``dst`` as another study of the same patient: its
    StudyDate set, new Study/Series/SOP Instance UIDs (a prior for follow-up tests); returns
    the new SeriesInstanceUID."""
    import pydicom
    from pydicom.uid import generate_uid
    dst.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    for f in sorted(need(src).glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.StudyDate, ds.StudyInstanceUID, ds.SeriesInstanceUID = study_date, study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(dst / f.name)
    return series


def link_ct_phantom(study: Path) -> Path:
    """``study/ct`` holding links to the 140-slice CT phantom (a study folder to put result
    objects beside, without copying the data); returns ``study``."""
    import os
    (study / "ct").mkdir(parents=True, exist_ok=True)
    for f in sorted(need(CT_PHANTOM).glob("*.dcm")):
        os.symlink(f, study / "ct" / f.name)
    return study


@pytest.fixture(scope="session")
def ct_index():
    from imaging_assist.dicom import scan
    return scan(str(need(CT_PHANTOM)))


@pytest.fixture(scope="session")
def ct_volume(ct_index):
    from imaging_assist.dicom import load_series
    return load_series(ct_index.image_series()[0])
