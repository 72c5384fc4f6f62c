"""Figures people would rather look at than read (matplotlib, no display needed)."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure  # object API: no pyplot state, no display, nothing to close
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from pipeline.labels import OK, is_defect
from pipeline.models import LatentReport
from pipeline.models.convvae import ACTIVE_UNIT_KL


def latent_figure(report: LatentReport) -> Figure:
    if report.kind == "kl_per_dim":
        return kl_per_dim_figure(report.table["kl"].tolist(), ACTIVE_UNIT_KL)
    return codebook_usage_figure(report.table["count"].tolist(), report.summary.get("perplexity", 0.0))


def kl_per_dim_figure(kl_per_dim: list[float], active_floor: float) -> Figure:
    """Bar chart of the mean KL per latent dimension, sorted, with the active-unit floor."""
    values = sorted(kl_per_dim, reverse=True)
    fig = Figure(figsize=(8, 3.2))
    ax = fig.subplots()
    ax.bar(range(len(values)), values, color=["tab:blue" if v > active_floor else "tab:gray" for v in values])
    ax.axhline(active_floor, color="tab:red", linestyle="--", linewidth=1, label=f"active-unit floor {active_floor} nats")
    ax.set_yscale("symlog", linthresh=active_floor)
    ax.set_xlabel("latent dimension (sorted by KL)")
    ax.set_ylabel("mean KL on clean val (nats)")
    active = sum(v > active_floor for v in values)
    ax.set_title(f"KL per latent dimension: {active} of {len(values)} active")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def codebook_usage_figure(counts: list[int], perplexity: float) -> Figure:
    """Bar chart of how often each code is used on clean validation crops, sorted."""
    values = sorted(counts, reverse=True)
    fig = Figure(figsize=(8, 3.2))
    ax = fig.subplots()
    ax.bar(range(len(values)), values, color=["tab:blue" if v > 0 else "tab:gray" for v in values])
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel("code (sorted by use)")
    ax.set_ylabel("assignments on clean val")
    used = sum(v > 0 for v in values)
    ax.set_title(f"codebook usage: {used} of {len(values)} codes used, perplexity {perplexity:.1f}")
    fig.tight_layout()
    return fig


def _classes(labels: np.ndarray) -> list[str]:
    return sorted({str(c) for c in labels if is_defect(str(c))})


def roc_pr_figure(scores: np.ndarray, labels: np.ndarray, title: str) -> Figure:
    """ROC and precision-recall curves, all defects vs ok and each defect class vs ok."""
    labels = np.asarray(labels).astype(str)
    fig = Figure(figsize=(10, 4.2))
    roc_ax, pr_ax = fig.subplots(1, 2)
    clean = labels == OK
    for name in ["all defects", *_classes(labels)]:
        pick = np.ones_like(clean) if name == "all defects" else clean | (labels == name)
        y = ~clean[pick] if name == "all defects" else labels[pick] == name
        if y.all() or not y.any():
            continue
        fpr, tpr, _ = roc_curve(y, scores[pick])
        precision, recall, _ = precision_recall_curve(y, scores[pick])
        roc_ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, scores[pick]):.3f})")
        pr_ax.plot(recall, precision, label=f"{name} (AP {average_precision_score(y, scores[pick]):.3f})")
    roc_ax.plot([0, 1], [0, 1], color="tab:gray", linestyle=":", linewidth=1)
    roc_ax.set(xlabel="false positive rate (clean flagged)", ylabel="recall", title=f"ROC: {title}")
    pr_ax.set(xlabel="recall", ylabel="precision", title=f"precision-recall: {title}")
    for ax in (roc_ax, pr_ax):
        if ax.get_legend_handles_labels()[0]:  # the ROC diagonal carries no label
            ax.legend(loc="lower right" if ax is roc_ax else "lower left", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no labelled defects in this split", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def score_histogram_figure(scores: np.ndarray, labels: np.ndarray, threshold: float, title: str) -> Figure:
    """Score distribution per class with the threshold line: how far apart clean and defects are."""
    labels = np.asarray(labels).astype(str)
    fig = Figure(figsize=(8, 3.6))
    ax = fig.subplots()
    bins = np.histogram_bin_edges(scores, bins=40)
    for name in [OK, *_classes(labels)]:
        if (labels == name).any():
            ax.hist(scores[labels == name], bins=bins, alpha=0.55, label=f"{name} ({int((labels == name).sum())})")
    ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set(xlabel="score", ylabel="images", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def confusion_figure(scores: np.ndarray, labels: np.ndarray, threshold: float, title: str) -> Figure:
    """Confusion matrix at the threshold: true class (ok / each defect class) x flagged or not."""
    labels = np.asarray(labels).astype(str)
    rows = [OK, *_classes(labels)]
    flagged = scores >= threshold
    table = np.array([[int(((labels == r) & ~flagged).sum()), int(((labels == r) & flagged).sum())] for r in rows])
    fig = Figure(figsize=(4.6, 1.2 + 0.5 * len(rows)))
    ax = fig.subplots()
    ax.imshow(table / np.maximum(table.sum(axis=1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for (i, j), count in np.ndenumerate(table):
        ax.text(j, i, str(count), ha="center", va="center")
    ax.set_xticks([0, 1], ["passed", "flagged"])
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def example_grid_figure(images: list[torch.Tensor], captions: list[str], title: str, columns: int = 6) -> Figure:
    """A grid of RGB uint8 (3, S, S) images (heatmap overlays) with one caption each."""
    n_rows = max(1, -(-len(images) // columns))
    fig = Figure(figsize=(2.1 * columns, 2.4 * n_rows))
    axes = np.atleast_1d(fig.subplots(n_rows, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, caption in zip(axes, images, captions):
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def precision_in_use_figure(daily: dict[str, dict[str, dict[str, float]]]) -> Figure:
    """Share of reviewed flags that inspectors confirmed, per report date and model version
    (pipeline/review.py precision_in_use, per date): real-world precision and its drift."""
    fig = Figure(figsize=(8, 3.2))
    ax = fig.subplots()
    versions = sorted({v for by_version in daily.values() for v in by_version}, key=str)
    for version in versions:
        days = [d for d in sorted(daily) if version in daily[d]]
        ax.plot(days, [daily[d][version]["precision"] for d in days], marker="o", label=f"v{version}")
    ax.set(ylim=(0, 1.05), xlabel="report date", ylabel="confirmed / reviewed flags", title="precision in use")
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig
