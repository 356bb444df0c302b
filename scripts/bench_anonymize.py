#!/usr/bin/env python3
"""Benchmark: de-identify the 140-slice CT phantom, against dicognito 0.19.0 in the same run.

Each contender reads every file, de-identifies it and writes it to a fresh temporary folder
(files are in the page cache for both: a warm-up read precedes the timings).  Also measured:
how much of PS3.15 Table E.1-1 each leaves in place, on a CT slice with a distinct value planted
in every text attribute of the table (those whose basic-profile action is X, Z, D or U; a value
still found anywhere in the output bytes counts as left).

Prints a few human lines, then one JSON object as the last line:
  files                  files de-identified per run
  files_per_s            ours, ``--workers`` processes (default 2), best of --repeat runs
  files_per_s_1_worker   ours, one process
  files_per_cpu_s_1_worker  ours, one process, per second of its own CPU time (what the load of
                         other programs does not change; mean of the runs)
  dicognito_files_per_s  dicognito Anonymizer().anonymize + save_as, one process, best of runs
  table_attributes_planted          attributes of Table E.1-1 planted
  table_attributes_left_ours        of those, values still in our output (target 0)
  table_attributes_left_dicognito   ... in dicognito's output
  load_1min              the machine's load average when the run ended (other work slows us)
With ``--ocr N`` it also measures the burned-in text cleaning on N real breast ultrasound images
(BUSI, shared/data) with one line of text drawn in (a name, an ID or a date; font size 10, 13,
16 or 20 px; white, yellow or light grey 200; every other image on a black band added above and
below the image, as scanners lay out their text, the others over the tissue; seeded), each a US
DICOM file:
  ocr_texts              lines drawn
  ocr_caught             lines whose drawn pixels are >= 98% inside the boxes blacked out
  ocr_caught_by_size     the same per font size
  ocr_caught_on_black_border / ocr_caught_over_tissue   the same per placement
  ocr_left_out           files the cleaning declined (text still read after blacking out)
  ocr_false_area         share of the pixels away from the text (> 8 px) that were blacked out
  ocr_clean_images_touched   of the same N images without text, how many got any box
  ocr_s_per_image        seconds per image
  ocr_missed             each line not caught: font size, colour, placement, share covered
Usage: scripts/bench_anonymize.py [SERIES_DIR] [--repeat N] [--workers N] [--ocr N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT = ROOT.parent / "shared" / "data" / "dicom" / "ct_head_phantom_philips" / \
    "series202_STD_BRAIN_1MM_iDose"
TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC",
            "UT", "UI"}


def ours(src: Path, out: Path, workers: int) -> float:
    from imaging_assist.privacy.deid import Options, deidentify_tree

    t0 = time.perf_counter()
    s = deidentify_tree(src, out, Options(), key=b"\x07" * 32, workers=workers, audit=False)
    dt = time.perf_counter() - t0
    if s.left_out:
        raise SystemExit(f"our run left out {len(s.left_out)} files: {s.left_out[0].reason}")
    return dt


def dicognito(files: list[Path], out: Path) -> float:
    import warnings

    import pydicom
    from dicognito.anonymizer import Anonymizer

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    anon = Anonymizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dicognito's own keyword look-ups warn in pydicom 3
        for f in files:
            ds = pydicom.dcmread(f)
            anon.anonymize(ds)
            ds.save_as(out / f.name)
    return time.perf_counter() - t0


def _value(vr: str, n: int) -> str:
    return {"DA": f"19{10 + n % 80:02d}0{1 + n % 9}1{n % 9}",
            "TM": f"1{n % 10}{n % 6}{n % 10}{n % 6}{n % 10}.{n:05d}",
            "DT": f"19{10 + n % 80:02d}0{1 + n % 9}1{n % 9}101010.{n:05d}",
            "UI": f"1.2.826.0.1.3680043.10.999.{n}", "DS": f"{880000 + n}", "IS": f"{880000 + n}",
            "AS": f"{n % 100:03d}Y", "CS": f"PHICS{n}", "PN": f"PHINAME{n}^GIVEN",
            }.get(vr, f"PHI TEXT {n} QQ")


def table_coverage(slice_path: Path, tmp: Path) -> dict:
    """Plant a value in every text attribute of Table E.1-1 whose basic action removes or
    replaces it; count the values each tool leaves in its output bytes."""
    import pydicom
    from pydicom.datadict import dictionary_VR
    from dicognito.anonymizer import Anonymizer

    from imaging_assist.privacy.deid import Options, deidentify_tree, table

    exact, _masked, _h = table()
    ds = pydicom.dcmread(slice_path)
    planted = {}
    for n, (tag, row) in enumerate(sorted(exact.items())):
        if tag >> 16 in (0x0000, 0x0002, 0xFFFA, 0xFFFC) or tag in (0x00080016, 0x00080018):
            continue
        try:
            vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:
            continue
        if vr not in TEXT_VRS:
            continue
        v = _value(vr, n)
        ds.add_new(tag, vr, v)
        planted[tag] = v
    src = tmp / "planted"
    src.mkdir()
    ds.save_as(src / "p.dcm")
    cov = deidentify_tree(src, tmp / "ours_cov", Options(), key=b"\x07" * 32, audit=False)
    import warnings

    d2 = pydicom.dcmread(src / "p.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Anonymizer().anonymize(d2)
    (tmp / "dcg_cov").mkdir()
    d2.save_as(tmp / "dcg_cov" / "p.dcm")
    ob = Path(cov.written[0].output).read_bytes()  # (output names are keyed pseudonyms)
    db = (tmp / "dcg_cov" / "p.dcm").read_bytes()
    left_ours = [t for t, v in planted.items() if v.encode() in ob]
    left_dcg = [t for t, v in planted.items() if v.encode() in db]
    return {"planted": len(planted), "ours": left_ours, "dicognito": left_dcg}


NAMES = ["SMITH^ANNA", "MRN 483-2291", "2021-03-04 10:22", "DOE JOHN", "ID 0093817",
         "KOWALSKI^P", "12/07/1985", "ACC 77120"]


def ocr_measure(n: int) -> dict:
    import random

    import numpy as np
    import pydicom
    from PIL import Image, ImageDraw, ImageFont
    from pydicom.dataset import Dataset, FileMetaDataset
    from scipy import ndimage

    from imaging_assist.privacy import ocr

    rng = random.Random(7)
    folder = ROOT.parent / "shared" / "data" / "ultrasound" / "breast_busi"
    imgs = sorted(p for p in folder.glob("*/*.jpg"))
    rng.shuffle(imgs)
    font_file = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    sizes = (10, 13, 16, 20)
    caught = {sz: [0, 0] for sz in sizes}
    left_out = 0
    false_px = total_px = 0
    touched = 0
    t0 = time.perf_counter()

    def as_ds(arr):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.Modality = "US"
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
        ds.set_pixel_data(arr, "RGB", 8, generate_instance_uid=True)
        return ds

    def boxes_of(outcome, shape):
        m = np.zeros(shape, bool)
        for x0, y0, x1, y1 in outcome.rects:
            m[y0:y1, x0:x1] = True
        return m

    by_place = {"border": [0, 0], "tissue": [0, 0]}
    missed = []
    for i in range(n):
        base = np.asarray(Image.open(imgs[i]).convert("RGB"))
        sz = sizes[(i // 2) % len(sizes)]  # every size in both placements
        text = NAMES[i % len(NAMES)]
        colour = [(255, 255, 255), (255, 255, 0), (200, 200, 200)][i % 3]
        place = "border" if i % 2 == 0 else "tissue"
        if place == "border":
            # the usual scanner layout: the image with a black band above and below, text in it
            band = np.zeros((2 * sz + 8, base.shape[1], 3), np.uint8)
            base = np.concatenate([band, base, band])
        im = Image.fromarray(base.copy())
        d = ImageDraw.Draw(im)
        font = ImageFont.truetype(font_file, sz)
        w = int(d.textlength(text, font=font))
        h, wd = base.shape[:2]
        if place == "border":
            y = [4, h - sz - 6][rng.randrange(2)]
        else:
            y = [4 + 20, h - sz - 26, h // 2][rng.randrange(3)]
        x = rng.randrange(2, max(3, wd - w - 2))
        d.text((x, y), text, fill=colour, font=font)
        arr = np.asarray(im)
        drawn = (arr != base).any(axis=-1)
        out = ocr.clean_burned_in_text(as_ds(arr))
        caught[sz][1] += 1
        by_place[place][1] += 1
        if out.reason:
            left_out += 1
            missed.append(f"{sz}px {'white yellow grey'.split()[i % 3]} {place}: left out")
            continue
        m = boxes_of(out, drawn.shape)
        if drawn.any() and m[drawn].mean() >= 0.98:
            caught[sz][0] += 1
            by_place[place][0] += 1
        else:
            missed.append(f"{sz}px {'white yellow grey'.split()[i % 3]} {place}: "
                          f"{m[drawn].mean():.0%} covered")
        away = ~ndimage.binary_dilation(drawn, iterations=8)
        false_px += int((m & away).sum())
        total_px += int(away.sum())
        clean = ocr.clean_burned_in_text(as_ds(base.copy()))
        if clean.reason or clean.rects:
            touched += 1
    return {
        "ocr_texts": n,
        "ocr_caught": sum(c[0] for c in caught.values()),
        "ocr_caught_by_size": {f"{k}px": f"{v[0]}/{v[1]}" for k, v in caught.items()},
        "ocr_caught_on_black_border": f"{by_place['border'][0]}/{by_place['border'][1]}",
        "ocr_caught_over_tissue": f"{by_place['tissue'][0]}/{by_place['tissue'][1]}",
        "ocr_left_out": left_out,
        "ocr_false_area": round(false_px / max(total_px, 1), 4),
        "ocr_clean_images_touched": touched,
        "ocr_s_per_image": round((time.perf_counter() - t0) / max(2 * n, 1), 2),
        "ocr_missed": missed,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description="de-identification speed vs dicognito")
    ap.add_argument("series", nargs="?", default=str(DEFAULT))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ocr", type=int, default=0, metavar="N",
                    help="also measure burned-in text cleaning on N ultrasound images (slow)")
    args = ap.parse_args()
    src = Path(args.series)
    files = sorted(p for p in src.iterdir() if p.suffix.lower() == ".dcm")
    if not files:
        raise SystemExit(f"no .dcm files in {src}")
    for f in files:  # warm the page cache
        f.read_bytes()
    tmp = Path(tempfile.mkdtemp(prefix="bench-anon-"))
    try:
        # a folder of the .dcm files alone (the series folder holds a licence text too)
        only = tmp / "in"
        only.mkdir()
        for f in files:
            shutil.copyfile(f, only / f.name)
        ours(only, tmp / "warm", 1)
        t_ours = min(ours(only, tmp / f"o{i}", args.workers) for i in range(args.repeat))
        c0 = time.process_time()
        t_one = min(ours(only, tmp / f"p{i}", 1) for i in range(args.repeat))
        cpu_one = (time.process_time() - c0) / args.repeat
        t_dcg = min(dicognito(files, tmp / f"d{i}") for i in range(args.repeat))
        cov = table_coverage(files[0], tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(files)
    res = {
        "files": n,
        "files_per_s": round(n / t_ours, 1),
        "workers": args.workers,
        "files_per_s_1_worker": round(n / t_one, 1),
        "files_per_cpu_s_1_worker": round(n / cpu_one, 1),
        "dicognito_files_per_s": round(n / t_dcg, 1),
        "table_attributes_planted": cov["planted"],
        "table_attributes_left_ours": len(cov["ours"]),
        "table_attributes_left_dicognito": len(cov["dicognito"]),
        "load_1min": round(os.getloadavg()[0], 2),
    }
    if args.ocr:
        res.update(ocr_measure(args.ocr))
        print(f"OCR: {res['ocr_caught']} of {res['ocr_texts']} drawn lines blacked out "
              f"({res['ocr_caught_by_size']}; on a black border {res['ocr_caught_on_black_border']}, "
              f"over tissue {res['ocr_caught_over_tissue']}), {res['ocr_left_out']} files declined, "
              f"{res['ocr_false_area']:.2%} of the other pixels blacked out, "
              f"{res['ocr_clean_images_touched']} of {res['ocr_texts']} text-free images touched")
    from pydicom.datadict import keyword_for_tag
    print(f"ours: {res['files_per_s']} files/s ({args.workers} workers), "
          f"{res['files_per_s_1_worker']} files/s (1 worker); dicognito: "
          f"{res['dicognito_files_per_s']} files/s")
    print(f"Table E.1-1 attributes planted: {cov['planted']}; left by ours: {len(cov['ours'])}; "
          f"left by dicognito: {len(cov['dicognito'])} (e.g. "
          + ", ".join(keyword_for_tag(t) or f"{t:08X}" for t in cov["dicognito"][:12]) + ")")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
