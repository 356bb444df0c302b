"""Explanations: every method passes the model-randomisation sanity check on small models
trained in the test, heat maps land on the object (through the full pipeline, with a
non-square image that is resized), faithfulness beats a random order, Guided methods are
refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imaging_assist.explain.faithfulness import deletion_auc
from imaging_assist.explain.methods import (ExplainConfig, ExplainError, RegionScore, attribute,
                                            canonical_method, make_baseline)
from imaging_assist.explain.sanity import cascading_randomization

BG, FG = 0.2, 0.9  # background / object intensity in model space ([0, 1])
RESNET = {"block": "basic", "layers": [1, 1, 1, 1], "block_inplanes": [8, 16, 32, 64],
          "spatial_dims": 2, "n_input_channels": 1, "num_classes": 2, "conv1_t_size": 3,
          "conv1_t_stride": 2, "no_max_pool": True}
LAYER = "layer2"  # stride 4: 8 x 8 Grad-CAM cells on a 32 x 32 input


def _squares(n, g, size=32, side=6, noise=0.05, always=False):
    x = torch.randn(n, 1, size, size, generator=g) * noise + BG
    y = torch.ones(n, dtype=torch.long) if always else torch.randint(0, 2, (n,), generator=g)
    pos = torch.randint(1, size - side - 1, (n, 2), generator=g)
    mask = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        r, c = pos[i]
        if y[i] == 1:
            x[i, 0, r:r + side, c:c + side] = FG
            mask[i, r:r + side, c:c + side] = 1
    return x, y, pos, mask


@pytest.fixture(scope="module")
def classifier():
    """Tiny MONAI ResNet (global average pooling) trained to say whether a bright square is
    present."""
    from monai.networks.nets import ResNet

    torch.manual_seed(0)
    net = ResNet(**RESNET)
    opt = torch.optim.Adam(net.parameters(), 5e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        x, y, _, _ = _squares(16, g)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    x, y, _, _ = _squares(64, g)
    with torch.no_grad():
        acc = float((net(x).argmax(1) == y).float().mean())
    assert acc > 0.95, acc
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@pytest.fixture(scope="module")
def segmenter():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(2, 1, 2, (8, 16, 32), (2, 2), num_res_units=1)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    g = torch.Generator().manual_seed(2)
    for _ in range(40):
        x, _, _, m = _squares(16, g, side=7, always=True)
        loss = torch.nn.functional.cross_entropy(net(x), m)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _sample(seed=5):
    g = torch.Generator().manual_seed(seed)
    while True:
        x, y, pos, mask = _squares(1, g)
        if y[0] == 1:
            return x, pos[0], mask[0]


CFG = {"gradcam": ExplainConfig("gradcam"), "integrated_gradients": ExplainConfig("ig", ig_steps=16),
       "saliency": ExplainConfig("saliency"), "occlusion": ExplainConfig("occlusion", occlusion_window=4)}


def _layer(net, name=LAYER):
    return dict(net.named_modules())[name]


@pytest.mark.parametrize("method", list(CFG))
def test_sanity_check_randomising_weights_changes_the_explanation(classifier, method):
    x, pos, _ = _sample()

    def explain(net):
        layer = _layer(net) if method == "gradcam" else None
        return attribute(net, x, CFG[method], target=1, layer=layer)[0].numpy()

    rep = cascading_randomization(classifier, explain, method)
    assert len(rep.steps) >= 3  # top-down, several blocks
    assert rep.passed and rep.final_spearman < 0.5, rep.to_dict()
    # the original model is untouched
    assert np.allclose(explain(classifier), explain(classifier))


def test_seg_gradcam_sanity_check(segmenter):
    x, _, mask = _sample()
    with torch.no_grad():
        region = (segmenter(x).argmax(1)[0] == 1).float()
    assert region.sum() > 10

    def explain(net):
        fwd = RegionScore(net, 1, region[None])
        return attribute(fwd, x, ExplainConfig("gradcam"), layer=dict(net.named_modules())["model.2.0"])[0].numpy()

    rep = cascading_randomization(segmenter, explain, "gradcam")
    assert rep.passed, rep.to_dict()


@pytest.mark.parametrize("method", ["gradcam", "integrated_gradients", "occlusion"])
def test_explanations_point_at_the_object_and_beat_random_deletion(classifier, method):
    x, pos, mask = _sample()
    layer = _layer(classifier) if method == "gradcam" else None
    a = attribute(classifier, x, CFG[method], target=1, layer=layer)[0]
    r, c = int(pos[0]), int(pos[1])
    # Grad-CAM's resolution is the layer's stride (4 pixels for layer2)
    tol = 4 if method == "gradcam" else 2
    peak = np.unravel_index(int(torch.argmax(a)), a.shape)
    assert r - tol <= peak[0] < r + 6 + tol and c - tol <= peak[1] < c + 6 + tol, (peak, (r, c))
    inside = torch.zeros_like(a, dtype=torch.bool)
    inside[r:r + 6, c:c + 6] = True
    assert a[inside].mean() > 3 * a[~inside].abs().mean()

    def score(xb):
        return torch.softmax(classifier(xb), 1)[:, 1]

    base = make_baseline(x, "mean")
    good = deletion_auc(score, x, a, base, steps=20)
    bad = deletion_auc(score, x, -a, base, steps=20)  # least attributed first
    assert good["deletion_auc"] < good["random_deletion_auc"]
    assert bad["faithfulness"] < 0 < good["faithfulness"]
    assert good["faithfulness"] > 0.1 and bad["faithfulness"] < good["faithfulness"] - 0.2
    assert good["curve"][0] == pytest.approx(float(score(x)), abs=1e-5)


def test_guided_methods_are_refused_and_names_are_checked():
    for name in ("guided_backprop", "Guided-GradCAM"):
        with pytest.raises(ExplainError, match="sanity check"):
            canonical_method(name)
    with pytest.raises(ExplainError, match="unknown explanation method"):
        canonical_method("lime")
    assert canonical_method("IG") == "integrated_gradients" and canonical_method(None) == "gradcam"


def test_gradcam_heat_map_lands_on_the_object_through_the_pipeline(classifier, tmp_path):
    """Non-square PNG -> resized to 32x32 -> Grad-CAM -> mapped back to 48x80 pixels."""
    from PIL import Image

    from imaging_assist.inference.images import read_image
    from imaging_assist.inference.pipelines import RunOptions, run_model
    from imaging_assist.models.build import save_model_folder
    from imaging_assist.models.card import load_card
    from imaging_assist.models.loaders import load_model

    card = {"id": "squares", "name": "squares", "version": "1", "task": "classification",
            "modality": "OT", "spatial_dims": 2, "labels": ["empty", "square"],
            "input": {"channels": 1, "size": [32, 32],
                      "intensity": {"type": "scale_range", "a_min": 0, "a_max": 255}},
            "thresholds": {"square": {"threshold": 0.5, "sensitivity": 0.99, "specificity": 0.98}},
            "architecture": {"library": "monai", "name": "ResNet", "kwargs": RESNET},
            "gradcam_layer": LAYER, "license": "MIT", "intended_use": "tests",
            "not_for_clinical_use": True, "data": {"training": "synthetic", "validation": "synthetic"}}
    save_model_folder(tmp_path / "m", card, classifier)
    model = load_model(load_card(tmp_path / "m"))
    rng = np.random.default_rng(3)
    img = np.clip(rng.normal(BG * 255, 10, (48, 80)), 0, 255).astype(np.uint8)
    img[24:33, 15:30] = int(FG * 255)  # 9 x 15 pixels -> about 6 x 6 after resizing
    Image.fromarray(img).save(tmp_path / "sq.png")
    res = run_model(model, read_image(tmp_path / "sq.png"),
                    RunOptions(device="cpu", explain=ExplainConfig("gradcam")))
    assert res.decisions["square"]["positive"] is True
    hm = res.heatmaps[0]
    assert hm.label == "square" and hm.method == "gradcam" and hm.params["layer"] == LAYER
    h = hm.array[0]
    assert h.shape == (48, 80) and np.isfinite(h).all()
    pr, pc = np.unravel_index(int(np.argmax(h)), h.shape)
    assert 21 <= pr <= 35 and 12 <= pc <= 32, (pr, pc)
    inside = h[24:33, 15:30].mean()
    assert inside > 3 * h[:, 45:].mean()  # far right half: no object
    assert hm.faithfulness["faithfulness"] > 0


def test_explanation_region_areas_carry_their_spacing_source(tmp_path):
    """The structures' areas in ``explanation_region`` say which pixel spacing they rest on."""
    import torch.nn as nn

    from imaging_assist.explain.regions import RegionExplainer
    from imaging_assist.inference.results import ClassificationResult, HeatMap
    from imaging_assist.models.build import save_model_folder
    from imaging_assist.models.card import load_card
    from imaging_assist.models.loaders import load_model
    from imaging_assist.volume import Volume

    conv = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([-20.0, 20.0]).reshape(2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([10.0, -10.0]))
    card = {"id": "bright-seg", "name": "b", "version": "1", "task": "segmentation", "modality": ["CR"],
            "spatial_dims": 2, "labels": ["background", "bright"], "input": {"channels": 1},
            "inference": {"roi_multiple": 8}, "license": "MIT", "intended_use": "tests",
            "not_for_clinical_use": True, "data": {"training": "none", "validation": "none"}}
    save_model_folder(tmp_path / "seg", card, conv.eval(), fmt="torchscript",
                      example_input=torch.zeros(1, 1, 8, 8))
    seg = load_model(load_card(tmp_path / "seg"))

    class Entry:
        card, shadowed_by = seg.card, None

    class Reg:
        def entries(self):
            return [Entry()]

    class Cls:
        explanation_region = type("S", (), {"model": "bright-seg", "labels": ["bright"], "name": "bright"})()

    arr = np.zeros((1, 16, 16), np.float32)
    arr[0, 4:12, 4:8] = 1.0
    heat = np.zeros_like(arr)
    heat[0, 5:7, 5:7] = 1.0
    for source, unit, area in (("ImagerPixelSpacing/ERMF", "mm2", 32 * 0.5 * 0.25), ("none", "px", 32)):
        vol = Volume(arr, spacing=(0.5, 0.25, 1.0), modality="CR", has_geometry=False)
        vol.spacing_source = source
        if not isinstance(getattr(Volume, "spacing_known", None), property):
            vol.spacing_known = source != "none"
        res = ClassificationResult("c", "1", "classification", ["n", "p"],
                                   heatmaps=[HeatMap("p", "saliency", heat)])
        er = RegionExplainer(Cls(), registry=Reg(), load=lambda c: seg, device="cpu").apply(res, vol)
        assert "error" not in er, er
        assert er["area_unit"] == unit and er["areas"]["bright"] == pytest.approx(area)
        assert er["spacing_source"] == source and er["fraction_inside"] == 1.0
