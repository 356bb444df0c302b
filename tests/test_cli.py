"""The command line: JSON output, one-line errors, no tracebacks."""

import io
import json
import os
import subprocess
import sys

from conftest import CT_PHANTOM, DICOM, need


def run(*args):
    return subprocess.run([sys.executable, "-m", "imaging_assist", *args], capture_output=True, text=True,
                          timeout=120)


def test_scan_json():
    r = run("scan", str(need(DICOM)), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    series = [s for p in data["patients"] for st in p["studies"] for s in st["series"]]
    ct = [s for s in series if s["description"] == "STD BRAIN 1MM, iDose"][0]
    assert ct["instances"] == 140 and ct["modality"] == "CT" and ct["rows"] == 512
    # the licence texts beside the series are other files (path, kind), not problems
    assert data["problems"] == [] and len(data["other_files"]) == 8
    assert {"path", "kind"} <= set(data["other_files"][0])


def test_info_json_geometry():
    r = run("info", str(need(CT_PHANTOM)), "--json")
    assert r.returncode == 0, r.stderr
    g = json.loads(r.stdout)
    assert g["shape"] == [140, 512, 512] and g["units"] == "HU" and g["dtype"] == "int16"
    assert g["spacing"] == [0.451172, 0.451172, 1.0]
    assert g["value_range"][0] == -1024
    assert any(p["name"] == "Lung" for p in g["window_presets"])


def test_info_warns_on_tilt():
    r = run("info", str(need(DICOM / "ct_gantry_tilt_uneven_spacing_ge_subset")))
    assert r.returncode == 0
    assert "warning: gantry tilt" in r.stdout and "warning: uneven slice spacing" in r.stdout


def test_errors_are_one_line(tmp_path):
    r = run("info", str(tmp_path / "missing"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error:")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\x00" * 200)
    r = run("info", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.startswith("error:")
    r = run("info", str(need(DICOM)))  # several series: asks to choose
    assert r.returncode == 2 and "--series" in r.stderr


def test_demo_headless(tmp_path):
    (tmp_path / "no_models").mkdir()  # the models' part: tests/test_demo.py
    out = tmp_path / "out"  # a folder of its own: the demo refuses one holding files it did not write
    r = run("demo", "--headless", "--models", str(tmp_path / "no_models"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["not_for_clinical_use"] is True
    cts = [s for s in report["series"] if s["modality"] == "CT"]  # the LIDC nodule CT and the head phantom
    assert sorted(s["shape"] for s in cts) == [[16, 256, 256], [28, 256, 256]]
    ct = cts[0]
    assert os.path.isfile(ct["key_image"]) and ct["key_image"].endswith("_ct.png")
    assert "Report written to" in r.stdout


def test_scan_lists_slides_beside_studies():
    from conftest import SHARED
    svs_dir = need(SHARED / "pathology" / "wsi_aperio_cmu1_small_region")
    r = run("scan", str(svs_dir), str(need(DICOM / "cr_chest_monochrome1_fuji")), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [s["mpp"] for s in data["slides"]] == [[0.499, 0.499]]
    assert not [p for p in data["problems"] if p["path"].endswith(".svs")]
    assert len([s for p in data["patients"] for st in p["studies"] for s in st["series"]]) == 1
    r = run("info", str(svs_dir / "CMU-1-Small-Region.svs"))
    assert r.returncode == 0 and "0.499" in r.stdout and "label" in r.stdout


_subprocess_run = run  # the tests below that call `run` in-process still need this one

# =========================================================================== bad arguments
DEMO_CXR = "imaging_assist/data/demo/chest_xray"


def _one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.startswith("error:") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def test_bad_option_values_are_one_line_errors(tmp_path):
    """Numbers out of range, an output path that is a file, an unknown label: a one-line
    `error:` and exit 2 before anything runs (not an internal error, not a usage dump)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cxr = os.path.join(here, DEMO_CXR)
    afile = tmp_path / "a_file"
    afile.write_text("x")
    out = str(tmp_path / "o")
    base = ["analyze", cxr, "--model", "cxr-pneumonia"]
    _one_line_error(run(*base, "--out", str(afile)), "a_file", "not a folder")
    _one_line_error(run("demo", "--headless", "--models", str(tmp_path), "--out", str(afile)), "not a folder")
    _one_line_error(run(*base, "--out", out, "--explain", "ig", "--ig-steps", "0"), "--ig-steps")
    _one_line_error(run(*base, "--out", out, "--batch-size", "0"), "--batch-size")
    _one_line_error(run(*base, "--out", out, "--top-tiles", "-1"), "--top-tiles")
    _one_line_error(run(*base, "--out", out, "--label", "nope", "--explain"), "nope", "pneumonia")
    _one_line_error(run(*base, "--out", ""), "--out is empty")
    # a device this machine does not have (MPS never exists on Linux): once, before anything runs
    _one_line_error(run(*base, "--out", out, "--device", "mps"), "--device mps")
    _one_line_error(run("demo", "--headless", "--models", str(tmp_path), "--device", "mps", "--out", out),
                    "--device mps")
    assert not os.path.exists(out)  # refused before any output was written
    _one_line_error(run("scan", str(tmp_path / "nothing_here")), "nothing_here", "no such file or folder")
    _one_line_error(run("info"), "SERIES_PATH_OR_UID")  # argparse's own errors: one line too
    _one_line_error(run("analyze", cxr, "--out", out), "--model")
    _one_line_error(run("no-such-command"), "no-such-command")


def test_help_of_every_command():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("scan", "info", "view", "demo", "models", "analyze"):
        assert cmd in r.stdout
        h = run(cmd, "--help")
        assert h.returncode == 0 and h.stdout.startswith(f"usage: imaging-assist {cmd}"), (cmd, h.stderr)
    for action in ("list", "add", "show", "trust", "untrust", "verify"):
        h = run("models", action, "--help")
        assert h.returncode == 0 and f"models {action}" in h.stdout, (action, h.stderr)


# =========================================================================== bundle code and trust
def _code_bundle(dst, marker):
    """A MONAI bundle (the zoo's endoscopic config, a tiny UNet) whose network_def holds a
    `$` expression that creates ``marker`` when it is evaluated."""
    import hashlib
    import shutil

    import torch
    from conftest import SHARED
    from monai.networks.nets import UNet

    shutil.copytree(need(SHARED / "monai_bundles" / "endoscopic_tool_segmentation"), dst)
    cfg = dst / "configs" / "inference.json"
    d = json.loads(cfg.read_text())
    d["network_def"] = {"_target_": "UNet", "spatial_dims": 2, "in_channels": 3, "out_channels": 2,
                        "channels": [4, 8], "strides": [2], "num_res_units": 0,
                        "_requires_": f"$__import__('pathlib').Path({str(marker)!r}).touch()"}
    cfg.write_text(json.dumps(d, indent=1))
    torch.manual_seed(0)
    (dst / "models").mkdir(exist_ok=True)
    torch.save(UNet(2, 3, 2, (4, 8), (2,), num_res_units=0).state_dict(), dst / "models" / "model.pt")
    md5 = hashlib.md5((dst / "models" / "model.pt").read_bytes()).hexdigest()
    (dst / "large_files.yml").write_text(
        f'large_files:\n- path: "models/model.pt"\n  url: "https://example.invalid/model.pt"\n'
        f'  hash_val: "{md5}"\n  hash_type: "md5"\n')
    return dst


class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _in_process(capsys):
    """Like run() but calls imaging_assist.cli.main in this process (stdin is not a terminal)."""
    from imaging_assist.cli import main

    def call(*args):
        capsys.readouterr()
        rc = main([str(a) for a in args])
        out = capsys.readouterr()
        return _Result(rc, out.out, out.err)

    return call


def test_bundle_code_never_runs_until_trusted(tmp_path, monkeypatch, capsys):
    """models add / show / list say what code a bundle holds; analyze and the headless demo
    never run it; after `models trust --yes` analyze runs it; untrust stops it again."""
    import numpy as np
    from PIL import Image

    monkeypatch.setenv("IMAGING_ASSIST_CONFIG_DIR", str(tmp_path / "cfg"))
    run = _in_process(capsys)  # one interpreter: MONAI is imported once
    marker = tmp_path / "code_ran"
    lib = tmp_path / "lib"
    lib.mkdir()
    _code_bundle(lib / "code-bundle", marker)
    png = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(png)

    r = run("models", "add", str(lib / "code-bundle"))
    assert r.returncode == 0, r.stderr
    assert "contains code:" in r.stdout and "network_def::_requires_" in r.stdout and str(marker) in r.stdout
    assert "will not run until trusted" in r.stdout and "models trust code-bundle" in r.stdout
    r = run("models", "show", "code-bundle")
    assert r.returncode == 0 and "Endoscopic" in r.stdout and "segmentation" in r.stdout
    assert "_requires_" in r.stdout and "will not run until trusted" in r.stdout
    r = run("models", "list", "--no-verify")
    assert r.returncode == 0 and "CODE" in r.stdout
    assert next(ln for ln in r.stdout.splitlines() if ln.startswith("code-bundle")).count("NOT TRUSTED") == 1

    r = run("analyze", str(png), "--model", "code-bundle", "--out", str(tmp_path / "o1"))
    _one_line_error(r, "contains code", "nothing of it was run", "models trust code-bundle")
    r = run("demo", "--headless", "--models", str(lib), "--out", str(tmp_path / "demo"))
    assert r.returncode == 0, r.stderr
    notes = json.loads((tmp_path / "demo" / "report.json").read_text())["notes"]
    assert any("code-bundle skipped" in n and "not trusted" in n for n in notes), notes
    assert "code-bundle skipped" in r.stdout
    r = run("models", "trust", "code-bundle")  # stdin is not a terminal: no silent yes
    _one_line_error(r, "--yes")
    assert not marker.exists()

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Tty("n\n"))  # on a terminal it asks; "n" trusts nothing
    r = run("models", "trust", "code-bundle")
    assert r.returncode == 1 and "[y/N]" in r.stdout and "not trusted" in r.stdout
    assert "NOT TRUSTED" in run("models", "list", "--no-verify").stdout
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))

    r = run("models", "trust", "code-bundle", "--yes")
    assert r.returncode == 0, r.stderr
    digest = r.stdout.strip().splitlines()[-1].split()[-1]
    assert "trusted code-bundle" in r.stdout and len(digest) == 64
    r = run("models", "list", "--no-verify")
    assert "code, trusted" in next(ln for ln in r.stdout.splitlines() if ln.startswith("code-bundle"))
    r = _subprocess_run("analyze", str(png), "--model", "code-bundle", "--out", str(tmp_path / "o2"))
    assert r.returncode == 0, r.stderr
    assert marker.exists()  # trusted: it runs as written
    # and the user reads our lines, not MONAI's warnings and log records
    assert "Warning" not in r.stderr and "warnings.warn" not in r.stderr, r.stderr
    assert "nvImageCodec" not in r.stderr, r.stderr

    marker.unlink()
    r = run("models", "untrust", "code-bundle")
    assert r.returncode == 0 and "trust withdrawn" in r.stdout
    _one_line_error(run("analyze", str(png), "--model", "code-bundle", "--out", str(tmp_path / "o3")),
                    "contains code")
    assert not marker.exists()


def test_info_never_prints_millimetres_for_an_unknown_spacing():
    """The demo X-ray has no pixel spacing: info must not print `1, 1, 1 mm` as if it were
    measured, and says where a known spacing comes from."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = run("info", os.path.join(here, DEMO_CXR, "cxr_01_ap.dcm"))
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("Spacing"))
    assert "mm" not in line and "unknown" in line and "px" in line, line
    assert not any(ln.startswith(("Origin", "Direction")) for ln in r.stdout.splitlines()), r.stdout
    assert "Geometry    none" in r.stdout
    r = run("info", str(need(CT_PHANTOM)))
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("Spacing"))
    assert "0.4512, 0.4512, 1 mm" in line and "PixelSpacing" in line, line
    assert any(ln.startswith("Origin") for ln in r.stdout.splitlines())


# =========================================================================== fuzz
def _tag_edit(b: bytes, group: int, elem: int, vr: bytes, value: bytes):
    import struct

    key = struct.pack("<HH", group, elem) + vr
    i = b.find(key)
    if i < 0:
        return None
    n = struct.unpack("<H", b[i + 6:i + 8])[0]
    return b[:i + 6] + struct.pack("<H", len(value)) + value + b[i + 8 + n:]


def test_mutated_real_files_give_results_or_one_line_errors(tmp_path, capsys):
    """info and analyze on a real CR with flipped bytes, truncations and absurd header values:
    exit 0/1/2, every error one line, never an internal error or a traceback."""
    import random
    import struct

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    b = open(os.path.join(here, DEMO_CXR, "cxr_03_pa.dcm"), "rb").read()
    rng = random.Random(12)
    mutants = {}
    for k in range(4):
        m = bytearray(b)
        for _ in range(rng.randint(1, 30)):
            j = rng.randrange(len(m))
            m[j] ^= 1 << rng.randrange(8)
        mutants[f"flip{k}"] = bytes(m)
    for frac in (0.05, 0.5, 0.999):
        mutants[f"trunc{frac}"] = b[:int(len(b) * frac)]
    edits = {"rows0": (0x28, 0x10, b"US", struct.pack("<H", 0)),
             "rows_max": (0x28, 0x10, b"US", struct.pack("<H", 65535)),
             "cols_max": (0x28, 0x11, b"US", struct.pack("<H", 65535)),
             "bits7": (0x28, 0x100, b"US", struct.pack("<H", 7)),
             "rgb_claim": (0x28, 0x02, b"US", struct.pack("<H", 3)),
             "no_modality": (0x08, 0x60, b"CS", b""),
             "age_garbage": (0x10, 0x1010, b"AS", b"X9Y "),
             "body_part_knee": (0x18, 0x15, b"CS", b"KNEE")}
    for name, e in edits.items():
        m = _tag_edit(b, *e)
        assert m is not None, name
        mutants[name] = m
    run = _in_process(capsys)
    for name, data in mutants.items():
        d = tmp_path / name
        d.mkdir()
        (d / "x.dcm").write_bytes(data)
        for argv in (["info", d / "x.dcm"], ["analyze", d, "--model", "cxr-pneumonia", "--out", tmp_path / f"{name}_out"]):
            r = run(*argv)
            assert r.returncode in (0, 1, 2), (name, argv[0], r.returncode)
            assert "internal error" not in r.stderr and "Traceback" not in r.stderr, (name, r.stderr)
            for ln in r.stderr.splitlines():
                assert ln.startswith(("error:", "warning:", "note:", "/")), (name, ln)
            if name == "body_part_knee" and argv[0] == "analyze":
                assert r.returncode == 2 and "the series shows KNEE" in r.stderr, r.stderr


def test_an_unreadable_item_is_named_once(tmp_path, capsys):
    """analyze: a truncated film is one error line that names the file once (the reader's own
    message starts with the path), and the run goes on to its summary."""
    from conftest import SHARED

    film = need(SHARED / "cxr" / "pneumonia_kermany" / "train" / "NORMAL" / "IM-0115-0001.jpeg")
    bad = tmp_path / "in" / "truncated.jpeg"
    bad.parent.mkdir()
    data = film.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    r = _in_process(capsys)("analyze", bad, "--model", "cxr-pneumonia", "--out", tmp_path / "out")
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode != 0 and line.count(str(bad)) == 1 and "not a readable" in line, r.stderr
    assert json.loads((tmp_path / "out" / "results.json").read_text())["items"][0]["error"]


def test_a_point_on_the_patients_right_is_taken_by_at():
    """LPS X is negative on the patient's right: `--at -31.2,0,0` was refused by argparse
    ("expected one argument"); it is the point."""
    from imaging_assist.cli.main import _glue_coordinates, build_parser

    argv = _glue_coordinates(["analyze", "ct", "--model", "ct-nodule-seg", "--at", "-31.25,-4,-115.5",
                              "--at", "10,20,30", "--out", "o"])
    args = build_parser(argv).parse_args(argv)
    assert args.at == ["-31.25,-4,-115.5", "10,20,30"] and args.out == "o"
