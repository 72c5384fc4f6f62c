"""The benchmark's JSON result as Markdown: quality and speed per set and method, and the table
over split (and training) seeds. bench.md is this text."""

from __future__ import annotations


def markdown_table(result: dict) -> str:
    """Quality and speed tables, one row per data set and method."""
    lines = ["| data set | method | test ROC-AUC (95 % CI) | PR-AUC | pixel ROC-AUC | per class / group ROC-AUC | "
             "score (chosen on val) |",
             "|---|---|---|---|---|---|---|"]
    for name, data in result["datasets"].items():
        for method, m in data["methods"].items():
            extra = ", ".join(f"{k.removeprefix('roc_auc_')} {v:.3f}" for k, v in m.items()
                              if k.startswith("roc_auc_") and not k.startswith("roc_auc_ci") and isinstance(v, float))
            ci = f" ({m['roc_auc_ci_low']:.3f}–{m['roc_auc_ci_high']:.3f})" if "roc_auc_ci_low" in m else ""
            pixel = f"{m['pixel_roc_auc']:.3f}" if "pixel_roc_auc" in m else ""
            score = m.get("score", "")
            if "val_roc_auc" in m:  # how the choice looked on val: labelled images, and pasted defects
                pasted = m["val_synthetic_auc"]  # NaN for a per-family mix
                score += f" (val {m['val_roc_auc']:.3f}" + (f", pasted {pasted:.3f})" if pasted == pasted else ")")
            lines.append(f"| {name} | {method} | {m.get('roc_auc', float('nan')):.3f}{ci} | "
                         f"{m.get('pr_auc', float('nan')):.3f} | {pixel} | {extra} | {score} |")
    for method, s in result.get("summary", {}).items():
        lines.append(f"| **mean of {s['sets']} real sets** | {method} | {s['mean_roc_auc']:.3f} | | | "
                     f"lowest {s['min_roc_auc']:.3f} | |")
    lines += ["", "| data set | model | s/epoch | I/O floor img/s | end-to-end img/s | share of floor |",
              "|---|---|---|---|---|---|"]
    for name, data in result["datasets"].items():
        for method, s in data["speed"].items():
            lines.append(f"| {name} | {method} | {s['seconds_per_epoch']:.2f} | {s['io_floor_images_per_s']:.0f} | "
                         f"{s['end_to_end_images_per_s']:.0f} | {s['end_to_end_share_of_floor']:.0%} |")
    lines += over_splits_table(result["over_splits"]) if "over_splits" in result else []
    m = result["machine"]
    lines += ["", f"{result['date']}, {m['platform']}, {m['cpu_count']} torch threads{', ' + m['cuda'] if m['cuda'] else ''}; "
              f"peak memory {result['peak_memory_mb']:.0f} MB; {result['seconds']:.0f} s in all."]
    return "\n".join(lines) + "\n"


def over_splits_table(over: dict) -> list[str]:
    """Markdown lines: per method, each set's mean test ROC-AUC over the runs (split seeds, and
    training seeds when there are several; the lowest and highest beside it) and the mean over the
    real sets per run."""
    seeds = ", ".join(map(str, dict.fromkeys(over["seeds"])))
    train_seeds = list(dict.fromkeys(over.get("train_seeds", [])))
    runs = f"split seeds {seeds}" + (f" × training seeds {', '.join(map(str, train_seeds))}" if len(train_seeds) > 1 else "")
    sets = list(next(iter(over["methods"].values()))["roc_auc"]) if over["methods"] else []
    lines = ["", f"Over {runs} (mean test ROC-AUC, lowest–highest):", "",
             "| method | " + " | ".join(sets) + " | mean of the real sets, per run | over all runs |",
             "|---|" + "---|" * (len(sets) + 2)]
    for method, t in over["methods"].items():
        cells = [f"{t['mean_roc_auc'][name]:.3f} ({min(v):.3f}–{max(v):.3f})" for name, v in t["roc_auc"].items()]
        per_seed = " / ".join(f"{v:.3f}" for v in t["real_sets_per_split"]) or "no real set"
        overall = f"{t['real_sets_mean']:.3f}" if t["real_sets_per_split"] else ""
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {per_seed} | {overall} |")
    return lines
