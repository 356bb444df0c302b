"""A reader's correction is paired only with the file it was drawn on; DICOM corrections do not
abort a segmenter fine-tune; training labels are resized centre-aligned like the image."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from _finetune_seg_data import shifted_seg_set
from test_finetune_seg import home  # noqa: F401

import imaging_assist
from imaging_assist.inference import RunOptions, read_image, run_model
from imaging_assist.models.registry import Registry
from imaging_assist.monitoring.feedback import save_correction
from imaging_assist.monitoring.finetune_seg import cases_from_corrections

DEMO_DCM = Path(imaging_assist.__file__).parent / "data/demo/chest_xray/cxr_03_pa.dcm"


def test_a_replaced_source_file_is_not_paired_with_the_old_correction(home):  # noqa: F811
    data, _ = shifted_seg_set(home / "local", n=4)
    model = Registry().load("cxr-lung-seg")
    f = sorted((data / "images").glob("*.png"))
    for i, p in enumerate(f[:3]):
        vol = read_image(p)
        res = run_model(model, vol, RunOptions(device="cpu"))
        corr = np.asarray(Image.open(data / "masks" / p.name))
        # the first two as the label editor saves them (with the volume), the third as before
        out = save_correction(res.prediction_log_id, corr, model.card.labels, predicted=res.label_map,
                              volume=vol if i < 2 else None)
        with np.load(out["label_map_file"]) as z:
            assert (len(z["source_sha256"]) == 1) == (i < 2)
    shutil.copy(f[3], f[0])  # another patient's film now sits at the corrected film's path
    notes: list = []
    cases = cases_from_corrections("cxr-lung-seg", data, log=notes.append)
    assert {c["path"].name for c in cases} == {f[1].name, f[2].name}
    assert f"{f[0]}: changed since the correction: not used" in notes
    assert "1 corrections without a source hash: not checked" in notes


def test_dicom_corrections_are_skipped_not_an_abort(home):  # noqa: F811
    from imaging_assist.dicom.index import scan
    from imaging_assist.dicom.loader import load_series

    data, _ = shifted_seg_set(home / "local", n=1)
    shutil.copy(DEMO_DCM, data / "cxr_03_pa.dcm")
    ser = [s for p in scan([str(data / "cxr_03_pa.dcm")]).patients for st in p.studies for s in st.series][0]
    vol = load_series(ser)
    model = Registry().load("cxr-lung-seg")
    res = run_model(model, vol, RunOptions(device="cpu"))
    lm = res.label_map.copy()
    lm[0, :20, :20] = 1  # a reader's edit
    out = save_correction(res.prediction_log_id, lm, model.card.labels, predicted=res.label_map, volume=vol)
    with np.load(out["label_map_file"]) as z:
        assert list(z["source_sop_uids"]) == [str(vol.headers[0].get("SOPInstanceUID"))]
        assert z["source_sop_uids"][0].startswith("1.")
        assert len(z["source_sha256"]) == 1
    png = sorted((data / "images").glob("*.png"))[0]
    vp = read_image(png)
    rp = run_model(model, vp, RunOptions(device="cpu"))
    save_correction(rp.prediction_log_id, rp.label_map, model.card.labels, volume=vp)
    notes: list = []
    cases = cases_from_corrections("cxr-lung-seg", data, log=notes.append)
    assert [c["path"].name for c in cases] == [png.name]  # the plain film still trains
    assert "DICOM corrections are not used for fine-tuning yet: 1 skipped" in notes


def test_resize_labels_is_centre_aligned_and_unchanged_at_the_model_size():
    import torch
    import torch.nn.functional as F

    from imaging_assist.training import resize_labels

    rng = np.random.default_rng(0)
    same = rng.integers(0, 3, (224, 224))
    assert np.array_equal(resize_labels([same], (224, 224))[0].numpy(), same)  # scale 1: as before
    assert torch.equal(resize_labels([same], (224, 224))[0],
                       F.interpolate(torch.from_numpy(same)[None, None].float(), size=(224, 224),
                                     mode="nearest")[0, 0].long())
    # 672 -> 224 (3 source pixels per model pixel): the centre one of each three is taken
    lab = np.zeros((672, 672), np.int64)
    lab[1::3, 1::3] = 1
    assert resize_labels([lab], (224, 224))[0].numpy().all()
    # a blob keeps its centre where the image's area resize puts it (no half-pixel shift)
    lab = np.zeros((300, 300), np.int64)
    lab[100:200, 60:181] = 1
    img = F.interpolate(torch.from_numpy(lab)[None, None].float(), size=(224, 224), mode="area")[0, 0].numpy()
    y = resize_labels([lab], (224, 224))[0].numpy()
    rows, cols = np.nonzero(y)
    w = img / img.sum()
    ir, ic = np.indices(img.shape)
    assert abs(rows.mean() - (w * ir).sum()) < 0.2 and abs(cols.mean() - (w * ic).sum()) < 0.2
