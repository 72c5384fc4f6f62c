"""Figures people would rather look at than read (matplotlib, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def kl_per_dim_figure(kl_per_dim: list[float], active_floor: float) -> Figure:
    """Bar chart of the mean KL per latent dimension, sorted, with the active-unit floor."""
    values = sorted(kl_per_dim, reverse=True)
    fig, ax = plt.subplots(figsize=(8, 3.2))
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
