"""Figures people would rather look at than read (matplotlib, no display needed)."""

from __future__ import annotations

from matplotlib.figure import Figure  # object API: no pyplot state, no display, nothing to close

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
