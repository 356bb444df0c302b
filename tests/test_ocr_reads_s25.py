"""The burned-in text check runs tesseract with one OpenMP thread and two reads at once
(``scripts/bench_anonymize.py --ocr 12``: 4.17 -> 1.97 s per image here, the same boxes): the
reads come back in order, with the same words as one at a time, and the process's own
environment (torch's, the worker processes') never gets OMP_THREAD_LIMIT."""

from __future__ import annotations

import os

from PIL import Image, ImageDraw, ImageFont


def _picture(text: str) -> Image.Image:
    im = Image.new("L", (600, 90), 255)
    ImageDraw.Draw(im).text((20, 25), text, fill=0, font=ImageFont.load_default(size=32))
    return im


def test_reads_run_at_once_in_order_with_the_same_words_as_alone():
    from imaging_assist.privacy import ocr

    pics = [_picture("SMITH 4711"), _picture("JONES 0815"), _picture("DOE 1999")]
    pt = ocr._tesseract()
    alone = [pt.image_to_data(p, config="--psm 7", output_type=pt.Output.DICT) for p in pics]
    together = ocr._read_all(pics, "--psm 7")
    words = [[w for w in d["text"] if w.strip()] for d in together]
    assert words == [[w for w in d["text"] if w.strip()] for d in alone]
    assert words[0] == ["SMITH", "4711"] and "JONES" in words[1][0] and "DOE" in words[2][0]


def test_tesseract_gets_one_thread_and_this_process_does_not(monkeypatch):
    import pytesseract

    from imaging_assist.privacy import ocr

    monkeypatch.delenv("OMP_THREAD_LIMIT", raising=False)
    ocr._tesseract()
    env = pytesseract.pytesseract.environ
    assert env["OMP_THREAD_LIMIT"] == "1" and "OMP_THREAD_LIMIT" not in os.environ
    monkeypatch.setenv("PATH_SEEN_LIVE", "yes")  # read at each start, not a copy of the past
    assert dict(env.items())["PATH_SEEN_LIVE"] == "yes"
    monkeypatch.setenv("OMP_THREAD_LIMIT", "3")  # the user's own choice wins
    assert env["OMP_THREAD_LIMIT"] == "3"
