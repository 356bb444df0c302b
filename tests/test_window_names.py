"""Window presets from the file are named by WindowCenterWidthExplanation, else "File window"
(numbered when several), never "DICOM 1"."""

import numpy as np

from imaging_assist.display import presets_for
from imaging_assist.volume import Volume


def _vol():
    return Volume(array=np.zeros((1, 4, 4), np.int16), spacing=(1, 1, 1), modality="CR")


def test_explanation_names_the_window():
    p = presets_for(_vol(), ([40, 300], [400, 1500], ["SOFT TISSUE", "BONE"]))
    assert [x.name for x in p] == ["SOFT TISSUE", "BONE"]


def test_unnamed_windows_are_file_windows():
    assert [x.name for x in presets_for(_vol(), ([40], [400], []))] == ["File window"]
    p = presets_for(_vol(), ([40, 300, 500], [400, 1500, 2000], ["", "BONE"]))
    assert [x.name for x in p] == ["File window 1", "BONE", "File window 2"]
    assert not any("DICOM" in x.name for x in p)
