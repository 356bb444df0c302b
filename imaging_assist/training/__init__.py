"""Training code shared by the training scripts (``scripts/train_<id>.py``, through the thin
re-export ``scripts/_training.py``) and ``imaging-assist finetune``: one code path, so a site
fine-tune is trained exactly like the shipped model.  Engine code, no Qt.

- :mod:`.core`: seeds, devices, ``grouped_split``, ``preprocess_all`` (the engine's own
  ``model_input``), ``read_masks``, ``random_affine`` / ``random_intensity``, ``Log``, ``fit``,
  ``predict``, ``fit_temperature`` / ``fold_temperature``, ``read_rows``;
- :mod:`.segmentation`: aspect / gamma augmentation, ``augment_2d``, ``dice_ce_loss``,
  ``validation_by_dice``, ``read_label_png``, ``run_on_files``, ``mean_ci``;
- :mod:`.cards`: ``write_json``, ``card_for_training``, ``load_shipped``, ``keep_card_fields``;
- :mod:`.plots`: ``plot_log``, ``plot_reliability``, ``plot_roc``.
"""

from .cards import card_for_training, keep_card_fields, load_shipped, write_json
from .core import (IN_CHECKOUT, Log, cache_dir, data_root, device_text, fit, fit_temperature, fold_temperature,
                   grouped_split, pick_device, predict, preprocess_all, random_affine, random_intensity, read_masks,
                   read_rows, resize_labels, set_seed, source_root)
from .plots import plot_log, plot_reliability, plot_roc
from .segmentation import (augment_2d, dice_ce_loss, jsrt_split, mean_ci, per_lung, random_aspect, random_gamma, read_label_png,
                           run_on_files, validation_by_dice)

__all__ = ["IN_CHECKOUT", "Log", "augment_2d", "cache_dir", "card_for_training", "data_root", "device_text",
           "dice_ce_loss", "fit", "jsrt_split", "fit_temperature", "fold_temperature", "grouped_split", "keep_card_fields",
           "load_shipped", "mean_ci", "per_lung", "pick_device", "plot_log", "plot_reliability", "plot_roc",
           "predict", "preprocess_all", "random_affine", "random_aspect", "random_gamma", "random_intensity",
           "read_label_png", "read_masks", "read_rows", "resize_labels", "run_on_files", "set_seed", "source_root",
           "validation_by_dice", "write_json"]
