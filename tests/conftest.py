import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IMAGING_ASSIST_SHARED", ROOT.parent / "shared" / "data"))
DICOM = SHARED / "dicom"
CT_PHANTOM = DICOM / "ct_head_phantom_philips" / "series202_STD_BRAIN_1MM_iDose"
NINE_SYNTAXES = SHARED / "variety" / "dcm_qa_ts_same_image_9_syntaxes"

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


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
