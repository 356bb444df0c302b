"""A deliberately shifted local lung-segmentation set for the segmenter fine-tune tests: real
adult films of the COVID-19 image collection (lung_masks_covid_generalblockchain: right = 1,
left = 2; never used to train cxr-lung-seg) shown inverted (another site's MONOCHROME1 look),
shrunk to at most 256 px (the model works at 224²) with their masks (nearest neighbour)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import SHARED, need

COVID = SHARED / "cxr" / "lung_masks_covid_generalblockchain"


def shifted_seg_set(out: Path, n: int = 40, invert: bool = True, erase_masks: bool = False) -> tuple[Path, Path]:
    """``n`` films with both lungs annotated -> ``out/images``, ``out/masks`` (pixel value = label
    index), ``out/labels.csv`` (file, mask, patient_id).  ``erase_masks``: every mask empty (a
    candidate trained on them must come out worse)."""
    rows = [r for r in csv.DictReader(need(COVID / "labels.csv").open())
            if r["has_right_lung"] == "1" and r["has_left_lung"] == "1"][:n]
    assert len(rows) == n, f"only {len(rows)} COVID films with both lungs annotated"
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    lines = ["file,mask,patient_id"]
    for r in rows:
        im = Image.open(need(COVID / r["image"])).convert("L")
        lab = np.asarray(Image.open(need(COVID / r["label_mask"])).convert("L"))
        s = 256 / max(im.size)
        size = (max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s)))
        a = np.asarray(im.resize(size, Image.BILINEAR))
        m = np.where(np.isin(lab, (1, 2)), lab, 0).astype(np.uint8)
        m = np.asarray(Image.fromarray(m).resize(size, Image.NEAREST))
        if erase_masks:
            m = np.zeros_like(m)
        name = Path(r["image"]).stem
        Image.fromarray(255 - a if invert else a).save(out / "images" / f"{name}.png")
        Image.fromarray(m).save(out / "masks" / f"{name}.png")
        lines.append(f"images/{name}.png,masks/{name}.png,{r['patient_id']}")
    (out / "labels.csv").write_text("\n".join(lines) + "\n")
    return out, out / "labels.csv"
