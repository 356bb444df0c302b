"""Fine-tune a 2D segmenter (``cxr-lung-seg``) on a site's cases -> a candidate version.

The same training code as ``scripts/train_cxr_lung_seg.py`` (:mod:`imaging_assist.training`:
``preprocess_all`` through the engine's ``model_input``, ``resize_labels``, ``fit``, ``augment_2d``,
``dice_ce_loss``, ``validation_by_dice``, ``run_on_files``, ``mean_ci``).

Local cases: a CSV ``file,mask,patient_id`` relative to ``--data`` (mask: an image on the
file's own grid whose pixel value is the label index, 0 = background) and/or the readers'
corrections from the log (``--from-feedback``: the label editor's ``.npz`` of each run, the
latest per run, matched to the files of ``--data`` by their keyed pseudonym and, where the
correction records it, the source file's sha256; DICOM corrections are not used yet).  Patient-disjoint
60/20/20 split (train / validation for the epoch / local hold-out).  Dice (mean over the
foreground labels per image) of base and candidate through the engine (``run_model`` at the
image's own grid) on the local hold-out and on the model's original test split, with 95%
cluster-bootstrap intervals by patient and the paired difference; non-inferiority on Dice with
the margin stated; OOD statistics refitted as for classifiers (:func:`.finetune.refit_ood`).
"""

from __future__ import annotations

import copy
import csv
import zipfile
from pathlib import Path

import numpy as np

from ..errors import UserError
from .finetune import csv_patient

# The model's own data under the shared data folder: replay images (non-test rows) and the
# original test split (rows of predictions.csv with this ``set``); mask value -> label index.
DATASETS = {"cxr-lung-seg": {"folder": "cxr/lung_masks_jsrt", "file": "file", "mask": "label_mask",
                             "mask_values": {150: 1, 200: 2}, "test_set": "jsrt_test"}}


# --------------------------------------------------------------------------- local cases
def read_mask(path: Path, n_labels: int, mapping: dict[int, int] | None = None) -> np.ndarray:
    """A 2D label map on the image's own grid: a reader correction (``.npz`` of the label
    editor) or a mask image (pixel value = label index unless ``mapping``)."""
    from ..training import read_label_png

    path = Path(path)
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                a = np.asarray(z["label_map"])
        except (zipfile.BadZipFile, ValueError, OSError, KeyError, EOFError) as e:
            why = (str(e).splitlines() or [type(e).__name__])[0][:120]
            raise UserError(f"reader correction {path} cannot be read (damaged or not a label editor .npz: "
                            f"{why})") from None
        if a.ndim == 3 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 2:
            raise UserError(f"{path}: a correction of shape {a.shape} is not a 2D label map")
        a = a.astype(np.int64)
        if a.size and (a.min() < 0 or a.max() >= n_labels):
            raise UserError(f"{path}: label value {int(a.max())} is not a label index 0..{n_labels - 1}")
    else:
        a = read_label_png(path, mapping or {k: k for k in range(1, n_labels)})
        if mapping is None:
            from PIL import Image

            with Image.open(path) as im:
                raw = np.asarray(im.convert("L"))
            if int(raw.max()) >= n_labels:
                raise UserError(f"{path}: mask value {int(raw.max())} is not a label index 0..{n_labels - 1}")
    return a


def cases_from_csv(data: Path, labels_csv: Path) -> list[dict]:
    if not Path(labels_csv).is_file():
        raise UserError(f"labels CSV {labels_csv} not found")
    out = []
    with open(labels_csv, newline="", encoding="utf-8") as f:
        r = csv.DictReader(f)
        if not r.fieldnames or "file" not in r.fieldnames or "mask" not in r.fieldnames:
            raise UserError(f"{labels_csv} needs the columns file and mask (and patient_id) for a segmenter")
        for i, row in enumerate(r, start=2):
            p, m = Path(data) / row["file"], Path(data) / row["mask"]
            for q in (p, m):
                if not q.is_file():
                    raise UserError(f"{labels_csv} line {i}: {q} not found")
            out.append({"path": p, "mask": m, **csv_patient(row)})
    return out


def cases_from_corrections(model_id: str, data: Path, log=None) -> list[dict]:
    """The readers' corrected label maps of logged runs of ``model_id`` (latest per run),
    matched to the files of ``data`` by the keyed pseudonym the log stores.  A correction that
    records its source's sha256 is used only when the file found is that same file (a film put
    in its place since is another patient's lungs); older corrections (no hash) are used as
    before and counted.  DICOM corrections are left out (counted): the fine-tune reads plain
    images only."""
    from ..inference.images import is_plain_image
    from .feedback import file_sha256
    from .finetune import files_by_key
    from .log import open_log

    say = log or (lambda m: None)
    rows = open_log().query(
        "WITH latest AS (SELECT MAX(id) AS id FROM corrections GROUP BY run_id) "
        "SELECT r.input_key, r.patient_key, c.label_map_file FROM latest CROSS JOIN corrections c ON c.id = latest.id "
        "CROSS JOIN runs r ON r.id = c.run_id WHERE r.model_id = ? ORDER BY c.id", (model_id,))
    # the newest correction of an image wins (rows in correction order)
    want = {r[0]: (r[1], r[2]) for r in rows if r[0] and r[2] and Path(r[2]).is_file()}
    out = []
    n_dicom = n_unchecked = 0
    for k, ps in files_by_key(data, set(want)).items():
        if len(ps) > 1 or not is_plain_image(ps[0]):  # a DICOM series (one file or several)
            n_dicom += 1
            continue
        sha = _source_sha256(want[k][1])
        if sha is None:
            n_unchecked += 1
        else:
            try:
                same = file_sha256(ps[0]) in sha
            except OSError as e:
                say(f"{ps[0]}: cannot be read ({type(e).__name__}): not used")
                continue
            if not same:
                say(f"{ps[0]}: changed since the correction: not used")
                continue
        out.append({"path": ps[0], "mask": Path(want[k][1]), "patient": want[k][0] or k})
    if n_dicom:
        say(f"DICOM corrections are not used for fine-tuning yet: {n_dicom} skipped")
    if n_unchecked:
        say(f"{n_unchecked} corrections without a source hash: not checked")
    return out


def _source_sha256(npz) -> set | None:
    """The sha256 of the source file(s) a correction records; None for a correction saved
    before they were recorded, or without its file at hand (a damaged file is reported by
    :func:`read_mask`)."""
    try:
        with np.load(npz, allow_pickle=False) as z:
            sha = {str(x) for x in np.asarray(z["source_sha256"]).ravel()} if "source_sha256" in z.files else set()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        return None
    return sha or None


# --------------------------------------------------------------------------- measuring
def dice_per_image(labs, truths, n_labels: int) -> np.ndarray:
    """Mean over the foreground labels of each image's Dice (a label absent from both: 1)."""
    from ..evaluation import dice

    return np.array([np.mean([dice(a == k, b == k) for k in range(1, n_labels)]) for a, b in zip(labs, truths)])


def compare_dice(d_base: np.ndarray, d_cand: np.ndarray, groups, what: str) -> dict:
    """Both models' mean Dice with 95% cluster-bootstrap CIs by patient and the paired difference."""
    from .. import evaluation as E
    from ..training import mean_ci

    groups = np.asarray(groups, dtype=object)

    def one(d, seed):
        v, ci, n = mean_ci(d, seed, clusters=groups)
        return {"dice": round(v, 4), "dice_ci95": [round(ci[0], 4), round(ci[1], 4)], "n": n}

    diff = d_cand - d_base
    dci = E.bootstrap_ci(lambda a: float(np.mean(a)), diff, clusters=groups, seed=3)
    return {"data": what, "metric": "Dice", "n": int(len(diff)), "patients": int(len(set(groups.tolist()))),
            "base": one(d_base, 1), "candidate": one(d_cand, 2), "diff": round(float(np.mean(diff)), 4),
            "diff_ci95": [round(dci[0], 4), round(dci[1], 4)],
            "ci_method": "percentile cluster bootstrap by patient of the mean per-image Dice, 2,000 resamples "
                         "(paired: the same resample of the per-image differences)"}


def _original_split(card, odata: Path | None, original_test_max: int | None, seed: int, why: list | None = None):
    """(replay rows, test rows) of the model's own data: each row (image path, mask path).  The
    split list is the card's predictions.csv, else the shipped model's (a fine-tuned version has
    none); ``why`` (a list) receives the reason when there is none."""
    from .finetune import original_predictions_csv

    spec = DATASETS.get(card.id)
    if spec is None:
        return None, None
    pred_csv, why_not = original_predictions_csv(card)
    if pred_csv is None:
        if why is not None:
            why.append(why_not)
        return None, None
    if odata is None or not odata.is_dir():
        if why is not None:
            why.append(f"original data not found ({odata})")
        return None, None
    rows = list(csv.DictReader((odata / "labels.csv").open(newline="", encoding="utf-8")))
    test_files = {r["file"] for r in csv.DictReader(pred_csv.open(newline="")) if r.get("set") == spec["test_set"]}
    pairs = [(odata / r[spec["file"]], odata / r[spec["mask"]], r.get("patient_id") or r[spec["file"]]) for r in rows]
    test = [p for p, r in zip(pairs, rows) if r[spec["file"]] in test_files]
    rest = [p for p, r in zip(pairs, rows) if r[spec["file"]] not in test_files]
    return rest, _subsample(test, original_test_max, seed)


def _subsample(test: list, original_test_max: int | None, seed: int) -> list:
    if original_test_max and len(test) > original_test_max:
        rng = np.random.default_rng(seed)
        test = [test[i] for i in sorted(rng.choice(len(test), original_test_max, replace=False).tolist())]
    return test


# --------------------------------------------------------------------------- the run
def finetune_segmenter(card, out: Path, data: Path | None = None, labels_csv: Path | None = None,
                       from_feedback: bool = False, epochs: int = 6, replay: int = 200,
                       original_test_max: int | None = None, original_data: Path | None = None,
                       lr: float | None = None, batch_size: int = 8, seed: int = 0, margin: float | None = None,
                       log=print) -> dict:
    import functools

    import torch

    from .. import evaluation as E
    from .. import training as T
    from ..models.loaders import LoadedModel, load_model
    from . import versions
    from .finetune import (drop_test_patients, drop_test_split, finish_candidate, gather_cases, inherited_limitations,
                           refit_ood)

    margin = versions.margin_for("Dice") if margin is None else float(margin)
    n_labels = len(card.labels)
    cases = gather_cases(data, labels_csv, from_feedback, cases_from_csv,
                         lambda d: cases_from_corrections(card.id, d, log), "reader-corrected label maps", log)
    # the model's own data (replay rows, the original test split), read first: the local cases
    # must not hold the test films the candidate is measured on
    odata = Path(original_data) if original_data else (T.data_root() / DATASETS[card.id]["folder"]
                                                       if card.id in DATASETS else None)
    why_not: list = []
    rest, test = _original_split(card, odata, None, seed, why_not)
    cases, n_test_overlap = drop_test_split(cases, [p for p, _, _ in test or []], log)
    # no test film of a patient the candidate is fine-tuned on (the JSRT file name when no id)
    keep, n_test_patients, n_test_patient_ids = drop_test_patients(cases, [g for _, _, g in test or []], log)
    test = _subsample([t for t, k in zip(test or [], keep) if k], original_test_max, seed)
    from ..inference.images import read_image

    paths = [Path(c["path"]) for c in cases]
    truths = [read_mask(c["mask"], n_labels) for c in cases]
    for c, t in zip(cases, truths):  # the mask must lie on the image's own grid
        shp = tuple(read_image(c["path"]).array.shape[1:3])  # (1, H, W[, 3])
        if t.shape != shp:
            raise UserError(f"{c['mask']}: mask {t.shape[1]}x{t.shape[0]} does not match image "
                            f"{c['path']} {shp[1]}x{shp[0]}")
    groups = np.array([str(c["patient"]) for c in cases], dtype=object)
    split = T.grouped_split(groups, np.zeros(len(cases), int), (0.6, 0.2, 0.2), seed=seed)
    for k, name in ((0, "training"), (1, "validation"), (2, "hold-out")):
        if not (split == k).any():
            raise UserError(f"too few local cases: the patient-disjoint {name} part is empty "
                            f"({len(cases)} cases, {len(set(groups.tolist()))} patients; at least 5 patients needed)")
    for k in range(3):
        assert not (set(groups[split == k]) & set(groups[split != k])), "patient in two parts"
    log(f"local cases: {len(cases)} ({len(set(groups.tolist()))} patients): train {int((split == 0).sum())}, "
        f"validation {int((split == 1).sum())}, hold-out {int((split == 2).sum())}")

    size = tuple(card.raw["input"]["size"])
    x = T.preprocess_all(card, paths, f"finetune_{card.id}")
    y = T.resize_labels(truths, size)

    rep_x = rep_y = None
    if rest is None:
        log(f"{why_not[0] if why_not else f'original data not found ({odata})'}: no replay and no "
            "original-test comparison")
    elif replay and rest:
        rng = np.random.default_rng(seed)
        pick = [rest[i] for i in sorted(rng.choice(len(rest), min(replay, len(rest)), replace=False).tolist())]
        mv = DATASETS[card.id]["mask_values"]
        rep_x = T.preprocess_all(card, [p for p, _, _ in pick], f"replay_{card.id}")
        rep_y = T.read_masks([m for _, m, _ in pick], size, mv)

    base = load_model(card)
    net = copy.deepcopy(base.network)
    for p in net.parameters():  # the loaded network is frozen for inference
        p.requires_grad_(True)
    itr, iva, iho = (np.nonzero(split == k)[0] for k in range(3))
    x_tr, y_tr = x[itr], y[itr]
    if rep_x is not None:
        x_tr, y_tr = torch.cat([x_tr, rep_x]), torch.cat([y_tr, rep_y])
    lr = 1e-3 if lr is None else float(lr)
    norm = next((s for s in card.raw["input"].get("intensity") or [] if s.get("type") == "normalize"), None)
    augment = functools.partial(T.augment_2d, mean=float(norm["mean"][0]), std=float(norm["std"][0])) \
        if norm else T.augment_2d
    loss_fn = T.dice_ce_loss()
    names = {k: card.labels[k] for k in range(1, n_labels)}
    dev = torch.device("cpu")
    evaluate = T.validation_by_dice(x[iva], y[iva], loss_fn, dev, names)

    out.mkdir(parents=True, exist_ok=True)
    tlog = T.Log(out / "training_log.csv")
    T.set_seed(seed)
    info = T.fit(net, x_tr, y_tr, loss_fn=loss_fn, augment=augment, evaluate=evaluate, epochs=epochs,
                 batch_size=batch_size, lr=lr, weight_decay=1e-4, device=dev, log=tlog, seed=seed)
    net.eval()
    log(f"trained {info['epochs_run']} epochs (best {info['best_epoch']}, validation Dice {info['best_val_score']:.3f})")

    # Dice through the engine (run_model at each image's own grid), base and candidate
    cand_model = LoadedModel(card, net, "state_dict")

    def dices(model, ps, ts):
        return dice_per_image(T.run_on_files(model, ps), ts, n_labels)

    ho_p, ho_t = [paths[i] for i in iho], [truths[i] for i in iho]
    comps = {"local_holdout": compare_dice(dices(base, ho_p, ho_t), dices(cand_model, ho_p, ho_t), groups[iho],
                                           f"local hold-out: {len(iho)} images, patient-disjoint from the "
                                           "fine-tuning data")}
    if test:
        mv = DATASETS[card.id]["mask_values"]
        tp = [p for p, _, _ in test]
        tt = [T.read_label_png(m, mv) for _, m, _ in test]
        comps["original_test"] = compare_dice(dices(base, tp, tt), dices(cand_model, tp, tt),
                                              [g for _, _, g in test],
                                              f"the model's original test split ({len(test)} images of "
                                              f"predictions.csv set '{DATASETS[card.id]['test_set']}'"
                                              + (f"; {n_test_patients} images of {n_test_patient_ids} patients of "
                                                 "the local cases left out" if n_test_patients else "") + ")")

    val_x = x[iva].float() if rep_x is None else torch.cat([x[iva].float(), rep_x[: max(1, len(rep_x) // 4)].float()])
    ood_block = refit_ood(net, card, x_tr.float(), None, val_x, out,
                          f"the candidate's fine-tuning data ({len(x_tr)} images: local training part"
                          f"{' + replay of the original training images' if rep_x is not None else ''})")

    fg = " and ".join(card.labels[1:])
    metrics = [E.metric("Dice", c["candidate"]["dice"], c["candidate"]["dice_ci95"], c["n"], c["data"], f"mean of {fg}")
               for c in comps.values()]
    card_update = {
        "metrics": metrics,
        "metrics_ci": "percentile cluster bootstrap by patient of the mean per-image Dice, 2,000 resamples",
        "data": {**(card.raw.get("data") or {}),
                 "fine_tuning": f"{len(cases)} local images with reader-made or corrected label maps of "
                                f"{len(set(groups.tolist()))} patients, split by patient 60/20/20 (train / validation "
                                f"/ hold-out), seed {seed}"
                                + (f"; {n_test_overlap} more local images left out: films of the model's original "
                                   "test split" if n_test_overlap else "")
                                + (f"; {n_test_patients} films of the original test split left out of its "
                                   f"comparison: their {n_test_patient_ids} patients are local cases"
                                   if n_test_patients else "")},
        "limitations": inherited_limitations(card) + [
            f"Site fine-tune of {card.id} {card.version} on {len(cases)} local images; the segmentation quality "
            "checks are the base model's; the OOD statistics were refitted but their AUROC against other "
            "modalities was not re-measured."],
        "training": {"code": "imaging-assist finetune -> imaging_assist.training fit / augment_2d / dice_ce_loss "
                             "(the code of scripts/train_cxr_lung_seg.py)", "base_version": card.version,
                     "trained": "all", "epochs": info["epochs_run"], "best_epoch": info["best_epoch"], "max_lr": lr,
                     "batch_size": batch_size, "replay_images": 0 if rep_x is None else int(len(rep_x)),
                     "train_seconds": info["train_seconds"], "seed": seed},
    }
    ni = {"metric": "Dice", "margin": margin,
          "rule": f"promote only when the lower 95% bound of Dice(candidate) - Dice(base) (mean per-image Dice, "
                  f"paired) is above -{margin} on every comparison (local hold-out and original test split)"}
    return finish_candidate(card, out, card_update, net, comps, ni, ood_block, len(cases),
                            ["file", "mask", "patient_id"],
                            [[str(Path(cases[i]["path"]).resolve()), str(Path(cases[i]["mask"]).resolve()), groups[i]]
                             for i in iho], extra={"task": "segmentation", "left_out_original_test": n_test_overlap,
                                                    "original_test_left_out_local_patients": n_test_patients},
                            reference_images=[paths[i] for i in sorted(np.concatenate([iva, iho]).tolist())],
                            reference_text=f"the fine-tune's local validation and hold-out parts "
                                           f"({len(iva) + len(iho)} images the candidate was not trained on), run "
                                           "through the candidate", log=log)


def compare_segmenters(model_id: str, ca, cb, holdout: Path, a: str, b: str) -> dict:
    """Two versions' Dice through the engine on the same hold-out CSV (file, mask, patient_id)."""
    from ..models.loaders import load_model
    from ..training import run_on_files

    from .finetune import read_holdout

    rows = read_holdout(Path(holdout), need_mask=True)
    n = len(ca.labels)
    truths = [read_mask(r["mask"], n) for r in rows]
    g = [r["patient"] for r in rows]
    ds = [dice_per_image(run_on_files(load_model(c), [str(r["file"]) for r in rows]), truths, n) for c in (ca, cb)]
    c = compare_dice(ds[0], ds[1], g, f"local hold-out {holdout} ({len(rows)} images)")
    c["base"]["version"], c["candidate"]["version"] = a, b
    return {"model_id": model_id, "a": a, "b": b, "comparison": c, "not_for_clinical_use": True}
