"""The sweep's report: every trial ranked in a table (CSV and Markdown), the winner, two plots.

Ranking: trials with a finite metric that did not fail come first, best first (by their best
evaluation round, whose checkpoint is the one kept and served); the rest follow in trial order.
The winner is rank 1, so best.json and the first row of trials.csv always agree.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from trainers.config import TrainSection
from trainers.rounds import RoundReport

from .records import Outcome, TrialRecord

LR, RANK = "optim.lr", "lora.r"


def _eligible(record: TrialRecord, mode: str) -> bool:
    return record.outcome != "failed" and record.best_round(mode) is not None


def rank(records: list[TrialRecord], mode: str) -> list[TrialRecord]:
    """Best first; trials that failed or never reported a finite metric last."""
    def key(r: TrialRecord):
        best = r.best_round(mode)
        if not _eligible(r, mode) or best is None:
            return (1, 0.0, r.trial_id)
        return (0, -best.value if mode == "max" else best.value, r.trial_id)

    return sorted(records, key=key)


def winner(records: list[TrialRecord], mode: str) -> TrialRecord | None:
    ranked = rank(records, mode)
    return ranked[0] if ranked and _eligible(ranked[0], mode) else None


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_rows(records: list[TrialRecord], metric: str, mode: str, paths: list[str]) -> list[dict[str, Any]]:
    """One row per trial in rank order; the column names are those of trials.csv."""
    rows = []
    for i, r in enumerate(rank(records, mode), start=1):
        best = r.best_round(mode)
        rows.append({
            "rank": i if _eligible(r, mode) else None,  # failed or unscored trials are not ranked
            "trial_id": r.trial_id,
            **{p: r.config.get(p) for p in paths},
            f"best_{metric}": best.value if best else None,
            f"final_{metric}": r.final_value,
            "rounds": len(r.rounds),
            "stopped_early": r.outcome == "stopped early",
            "trainable_params": r.trainable_params,
            "wall_s": round(r.wall_s, 1),
            "status": r.outcome,
            "checkpoint": best.checkpoint if best else None,
            "error": r.error,
        })
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    if not rows:
        path.write_text("")
        return
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    """A table a person reads: no checkpoint paths; errors shortened and listed below it."""
    if not rows:
        return f"# {title}\n\nNo trials ran.\n"
    cols = [c for c in rows[0] if c not in ("checkpoint", "error")]
    lines = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = []
        for c in cols:
            v = row[c]
            cells.append("yes" if v is True else "" if v is False else f"{v:,}" if c == "trainable_params" and v
                         else _fmt(v))
        lines.append("| " + " | ".join(cells) + " |")
    errors = [(row["trial_id"], row["error"]) for row in rows if row.get("error")]
    if errors:
        lines += ["", "Errors:", ""]
        lines += [f"- `{t}`: {e.splitlines()[0][:300]}" for t, e in errors]
    return "\n".join(lines) + "\n"


class SweepWinner(BaseModel):
    """best.json: which trial won, with what values, spec, metrics and checkpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sweep: str
    metric: str
    mode: Literal["max", "min"]
    value: float = Field(description="The winner's best value of `metric`.")
    trial_id: str
    config: dict[str, Any] = Field(description="The values the winner sampled, by dotted path into train:.")
    checkpoint: str = Field(description="The checkpoint of the winner's best round (the one to serve).")
    step: int | None
    metrics: RoundReport | None = Field(description="Everything that round reported.")
    rounds: int
    status: Outcome
    train: TrainSection = Field(description="The winner's resolved train: section.")


def sweep_winner(record: TrialRecord, *, sweep: str, metric: str, mode: Literal["max", "min"],
                 train: TrainSection) -> SweepWinner:
    best = record.best_round(mode)
    if best is None or best.value is None or best.checkpoint is None:
        raise ValueError(f"trial {record.trial_id} has no scored round with a checkpoint to win with")
    return SweepWinner(sweep=sweep, metric=metric, mode=mode, value=best.value, trial_id=record.trial_id,
                       config=record.config, checkpoint=best.checkpoint, step=best.step, metrics=best.report,
                       rounds=len(record.rounds), status=record.outcome, train=train)


def _config_label(config: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in config.items())


def plot_trials(records: list[TrialRecord], metric: str, mode: str, path: Path) -> None:
    """Best metric per trial against the learning rate (log scale) coloured by LoRA rank, or
    against the trial index when those are not searched. Hollow markers: stopped early."""
    import matplotlib
    from matplotlib.figure import Figure

    ordered = sorted(records, key=lambda r: r.trial_id)
    by_lr = any(LR in r.config for r in ordered)
    by_rank = any(RANK in r.config for r in ordered)
    ranks = sorted({r.config[RANK] for r in ordered if RANK in r.config}, key=float)
    fig = Figure(figsize=(7, 4.5), dpi=110)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"]
    colours = {r: cmap(i / max(len(ranks) - 1, 1)) for i, r in enumerate(ranks)}
    hidden, seen = 0, set()
    win = winner(records, mode)
    for i, r in enumerate(ordered):
        best = r.best_round(mode)
        if best is None:
            hidden += 1
            continue
        x = float(r.config[LR]) if by_lr else i
        colour = colours.get(r.config.get(RANK), "tab:blue")
        label = f"r={r.config.get(RANK)}" if by_rank and r.config.get(RANK) not in seen else None
        seen.add(r.config.get(RANK))
        early = r.outcome == "stopped early"
        ax.scatter([x], [best.value], s=60, facecolors="none" if early else [colour], edgecolors=[colour],
                   linewidths=1.5, label=label, zorder=3)
        if win is not None and r.trial_id == win.trial_id:
            ax.annotate("best", (x, best.value), textcoords="offset points", xytext=(6, 6), fontsize=9)
    if by_lr:
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (optim.lr)")
    else:
        ax.set_xlabel("trial index")
    ax.set_ylabel(f"best {metric}")
    title = f"{len(ordered)} trials; hollow = stopped early"
    if hidden:
        title += f"; {hidden} without a finite {metric} not shown"
    ax.set_title(title, fontsize=10)
    if by_rank:
        ax.legend(title="LoRA rank", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def plot_learning_curves(records: list[TrialRecord], metric: str, path: Path) -> None:
    """The metric at every evaluation round of every trial (dashed: stopped early)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=110)
    ax = fig.add_subplot()
    drawn = 0
    for r in sorted(records, key=lambda r: r.trial_id):
        points = [(p.step, p.value) for p in r.rounds if p.value is not None and p.step is not None]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", markersize=3, linestyle="--" if r.outcome == "stopped early" else "-",
                label=f"{r.trial_id.rsplit('_', 1)[-1]}: {_config_label(r.config)}")
        drawn += 1
    ax.set_xlabel("optimizer step (one point per evaluation round)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per evaluation round; dashed = stopped early", fontsize=10)
    if 0 < drawn <= 20:
        ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def write_report(records: list[TrialRecord], out: Path, *, sweep: str, metric: str, mode: str,
                 paths: list[str]) -> list[dict[str, Any]]:
    """trials.csv, trials.md, trials.png and learning_curves.png in `out`; returns the rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(records, metric, mode, paths)
    write_csv(rows, out / "trials.csv")
    early = sum(1 for r in records if r.outcome == "stopped early")
    title = f"{sweep}: {len(records)} trials by {'highest' if mode == 'max' else 'lowest'} {metric}"
    (out / "trials.md").write_text(markdown(rows, title) + f"\n{early} stopped early by the scheduler.\n")
    plot_trials(records, metric, mode, out / "trials.png")
    plot_learning_curves(records, metric, out / "learning_curves.png")
    return rows

