"""A tile model (path-lung-tissue, 224-px tiles) on a plain image larger than two tiles:
``analyze`` tiles it as a slide, while the viewer's run (and any caller of ``run_model``) shrank
it to one tile and said nothing: the same H&E mosaic was "squamous 0.52" there and 81%
adenocarcinoma in analyze.  The run now says so."""
from __future__ import annotations

import numpy as np

from conftest import SHARED, need

TILES = SHARED / "pathology" / "lc25000_lung_subset" / "tiles" / "lung_aca"


def _run(path):
    from imaging_assist.inference.images import read_image
    from imaging_assist.inference.options import RunOptions
    from imaging_assist.inference.pipelines import run_model
    from imaging_assist.models.loaders import load_model
    from imaging_assist.models.registry import Registry

    card = Registry().get("path-lung-tissue").card
    return run_model(load_model(card, "cpu"), read_image(path), RunOptions(device="cpu"))


def test_a_mosaic_of_tiles_is_said_to_be_shrunk_and_one_tile_is_not(tmp_path):
    from PIL import Image

    tiles = sorted(need(TILES).glob("*"))[:16]
    one = np.asarray(Image.open(tiles[0]).convert("RGB").resize((224, 224)))
    mosaic = np.concatenate([np.concatenate([np.asarray(Image.open(t).convert("RGB").resize((224, 224)))
                                             for t in tiles[r * 4:(r + 1) * 4]], axis=1) for r in range(4)], axis=0)
    Image.fromarray(mosaic).save(tmp_path / "mosaic.png")
    Image.fromarray(one).save(tmp_path / "tile.png")
    said = [w for w in _run(tmp_path / "mosaic.png").warnings if "tiles such an image as a slide" in w]
    assert len(said) == 1 and "(896 x 896 px)" in said[0] and "4.0x smaller" in said[0], said
    assert not any("as a slide" in w for w in _run(tmp_path / "tile.png").warnings)
    # the rule is analyze's: it tiles this image
    from imaging_assist.slides.analysis import is_slide_input

    assert is_slide_input(tmp_path / "mosaic.png") and not is_slide_input(tmp_path / "tile.png")
