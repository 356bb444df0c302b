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
_USER_HOME = Path(tempfile.mkdtemp(prefix="imaging-assist-tests-"))
os.environ["XDG_CONFIG_HOME"] = str(_USER_HOME / "config")
os.environ["XDG_DATA_HOME"] = str(_USER_HOME / "data")


def need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"test data missing: {path} (../shared/data must sit beside the repo)")
    return path


@pytest.fixture(scope="session")
def ct_index():
    from imaging_assist.dicom import scan
    return scan(str(need(CT_PHANTOM)))


@pytest.fixture(scope="session")
def ct_volume(ct_index):
    from imaging_assist.dicom import load_series
    return load_series(ct_index.image_series()[0])
