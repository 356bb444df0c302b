"""Shared helpers of the monitor tests: an in-distribution stream (Kermany test split, which the
reference never saw) and a shifted stream made here from real films (another scanner's look:
gamma, inversion, adult films from JSRT and the NLM sets)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import SHARED, need

KERMANY = SHARED / "cxr" / "pneumonia_kermany"
ROOT = Path(__file__).resolve().parents[1]


def in_distribution(n: int, seed: int = 0) -> list[tuple[Path, str]]:
    """(file, label) of ``n`` images of cxr-pneumonia's test split (patient-disjoint from the
    validation split the monitor's reference was fitted on)."""
    rows = [r for r in csv.DictReader((ROOT / "weights" / "cxr-pneumonia" / "predictions.csv").open())
            if r["split"] == "test"]
    random.Random(seed).shuffle(rows)
    return [(need(KERMANY / r["file"]), r["label"]) for r in rows[:n]]


def shifted(n: int, out: Path, seed: int = 1) -> list[Path]:
    """``n`` shifted images written to ``out``: a third gamma 0.4 (another detector curve), a third
    inverted (MONOCHROME1 shown raw), a third adult films (JSRT, NLM)."""
    out.mkdir(parents=True, exist_ok=True)
    k = n // 3
    base = [p for p, _ in in_distribution(2 * k, seed=seed + 100)]
    adults = sorted(need(SHARED / "cxr" / "lung_masks_jsrt" / "images").glob("*.png"))[: (n - 2 * k + 1) // 2]
    adults += sorted(need(SHARED / "cxr" / "lung_masks_nlm_tb_subset" / "images").glob("*.jpg"))[: n - 2 * k - len(adults)]
    files = []
    for i, p in enumerate(base):
        a = np.asarray(Image.open(p).convert("L"), np.float32) / 255.0
        a = a ** 0.4 if i < k else 1.0 - a
        q = out / f"shift_{i:03d}.png"
        Image.fromarray((a * 255).round().astype(np.uint8)).save(q)
        files.append(q)
    return files + adults


def shifted_local_set(out: Path, n: int = 120, seed: int = 7, flip_labels: bool = False,
                      invert: bool = True) -> tuple[Path, Path]:
    """A deliberately shifted local set for fine-tuning: ``n`` films of the ORIGINAL Kermany test
    split (patients the model never saw in any split) shown inverted (another site's
    MONOCHROME1 look), half normal and half pneumonia; ``labels.csv`` with file, label,
    patient_id.  ``flip_labels``: every label swapped (a candidate that must come out worse);
    ``invert=False``: the films as they are."""
    rows = [r for r in csv.DictReader((ROOT / "weights" / "cxr-pneumonia" / "predictions.csv").open())
            if r["split"] == "original_test"]
    random.Random(seed).shuffle(rows)
    pick = [r for r in rows if r["label"] == "normal"][: n // 2] + [r for r in rows if r["label"] == "pneumonia"][: n - n // 2]
    img = out / "images"
    img.mkdir(parents=True, exist_ok=True)
    lines = ["file,label,patient_id"]
    for r in pick:
        a = np.asarray(Image.open(need(KERMANY / r["file"])).convert("L"))
        name = Path(r["file"]).name.replace(".jpeg", ".png")
        Image.fromarray(255 - a if invert else a).save(img / name)
        lab = r["label"]
        if flip_labels:
            lab = "normal" if lab == "pneumonia" else "pneumonia"
        lines.append(f"images/{name},{lab},{r['patient']}")
    (out / "labels.csv").write_text("\n".join(lines) + "\n")
    return out, out / "labels.csv"
