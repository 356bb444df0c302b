"""Training plots (matplotlib, Agg backend): the epoch log, reliability diagram, ROC curves."""

from __future__ import annotations

from pathlib import Path

from .core import Log


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_log(log: Log, png: Path, title: str, val_keys: list[str]) -> None:
    plt = _plt()
    ep = [r["epoch"] for r in log.rows]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot(ep, [r["train_loss"] for r in log.rows], label="train loss")
    if "val_loss" in log.rows[0]:
        ax[0].plot(ep, [r["val_loss"] for r in log.rows], label="validation loss")
    ax[0].set_xlabel("epoch")
    ax[0].legend()
    for k in val_keys:
        ax[1].plot(ep, [r[k] for r in log.rows], label=k.replace("_", " "))
    ax[1].set_xlabel("epoch")
    ax[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def plot_reliability(rel, png: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    mids = [(a + b) / 2 for a, b in zip(rel.bin_edges[:-1], rel.bin_edges[1:])]
    xs = [m for m, a in zip(mids, rel.accuracy) if a is not None]
    ys = [a for a in rel.accuracy if a is not None]
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    ax.bar(xs, ys, width=0.09, alpha=0.7, label="observed frequency")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"{title}\nECE {rel.ece:.3f}", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def plot_roc(curves: dict, png: Path, title: str) -> None:
    """curves: {name: (fpr, tpr, auc)}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
