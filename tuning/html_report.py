"""report.html: the one page to open after `zerotune tune` or `zerotune run`.

It holds the winner and why it won, every trial in a table, the two plots (embedded as data:
URIs, so the page still works when the folder is copied, mailed or read from a bucket), the
held-out scores beside the baseline when `zerotune run` measured them, links to the checkpoint,
TensorBoard and the log, and the exact command that serves the winner. One self-contained file,
no scripts, no network.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from typing import Any

from trainers.storage import Location

from .report import SweepWinner

REPORT_FILE = "report.html"
PLOTS = (("trials.png", "Best score of every trial"), ("learning_curves.png", "Every trial's score per evaluation round"))
_SHOWN_METRICS = ("eval_accuracy", "eval_macro_f1", "eval_f1", "eval_loss", "eval_perplexity")


@dataclass(frozen=True)
class HeldOut:
    """Scores on the held-out split: the served model's beside the baseline's."""

    rows: int
    model: dict[str, float]
    baseline: dict[str, float]
    url: str | None = None
    model_name: str = "zerotune (served)"
    baseline_name: str = "TF-IDF + logistic regression"


@dataclass(frozen=True)
class Link:
    label: str
    target: str  # what the page links to (relative where possible)
    shown: str  # what the page prints (the full path or URI)

    @classmethod
    def to(cls, label: str, base: Location, target: str) -> Link:
        """A link from a page in `base` to `target` (relative when it lies under `base`)."""
        return cls(label, *_link(base, target))


@dataclass(frozen=True)
class ReportPage:
    title: str
    why: list[str]  # the winner and why, one sentence each
    winner_values: dict[str, Any]
    validation: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)  # trials.csv's rows, best first
    images: dict[str, bytes] = field(default_factory=dict)  # file name -> PNG bytes
    held_out: HeldOut | None = None
    links: list[Link] = field(default_factory=list)
    commands: list[tuple[str, str]] = field(default_factory=list)  # (what it does, the command)


# --- building the page for a sweep -------------------------------------------------------------------

def sweep_page(exp: Location, best: SweepWinner, rows: list[dict[str, Any]], *, serve_command: str | None,
               held_out: HeldOut | None = None, log_file: Location | None = None) -> ReportPage:
    """The page for the sweep at `exp` (<storage>/<name>): its plots are read from there."""
    images = {}
    for name, _ in PLOTS:
        try:
            images[name] = exp.join(name).read_bytes()
        except (OSError, ValueError):
            pass  # a plot that was not drawn is left out, not faked
    links = [Link("winner's checkpoint", *_link(exp, best.checkpoint)),
             Link("best.json (the winner, as data)", *_link(exp, str(exp.join("best.json")))),
             Link("trials.csv", *_link(exp, str(exp.join("trials.csv")))),
             Link("TensorBoard logs (one run per trial)", *_link(exp, str(exp.join("runs"))))]
    if log_file is not None:
        links.append(Link("this command's log (library output)", *_link(exp, str(log_file))))
    commands = []
    if serve_command:
        commands.append(("serve the winner", serve_command))
    commands.append(("watch the learning curves", f"tensorboard --logdir {exp.join('runs')}"))
    return ReportPage(title=f"zerotune: {best.sweep}", why=_why(best, rows), winner_values=dict(best.config),
                      validation={k: v for k, v in (best.metrics.eval if best.metrics else {}).items()},
                      rows=rows, images=images, held_out=held_out, links=links, commands=commands)


def _why(best: SweepWinner, rows: list[dict[str, Any]]) -> list[str]:
    direction = "highest" if best.mode == "max" else "lowest"
    col = f"best_{best.metric}"
    scored = [r for r in rows if isinstance(r.get(col), (int, float))]
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r.get("status"))] = counts.get(str(r.get("status")), 0) + 1
    outcome = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    values = ", ".join(f"{k}={_fmt(v)}" for k, v in best.config.items()) or "the base spec"
    out = [f"Trial {best.trial_id} ({values}) had the {direction} {best.metric}, {best.value:.4f}, of the "
           f"{len(rows)} trials ({outcome}).",
           f"Its best evaluation round was at step {best.step if best.step is not None else '?'} (it ran "
           f"{best.rounds} round(s) and {best.status}); that round's checkpoint is the one kept and served."]
    others = [r for r in scored if r.get("trial_id") != best.trial_id]
    if others:
        runner = others[0]
        gap = abs(best.value - float(runner[col]))
        out.append(f"The runner-up, trial {runner['trial_id']}, reached {float(runner[col]):.4f} "
                   f"({gap:.4f} behind).")
    return out


def _link(base: Location, target: str) -> tuple[str, str]:
    """(href, shown): relative to the report when the target lies under its folder, so the links
    survive copying the folder; otherwise the target itself."""
    loc = Location.parse(target)
    shown = str(loc)
    if loc.is_local and base.is_local:
        rel = os.path.relpath(loc.path, base.path)
        if not rel.startswith(".."):
            return rel, shown
        return "file://" + loc.path, shown
    return shown, shown


# --- rendering -------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #1b1f24; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: .9rem; } th, td { padding: .3rem .6rem; border-bottom: 1px solid #ddd; }
th { text-align: left; background: #f4f6f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.winner td { background: #eaf6ea; font-weight: 600; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: .85rem; }
pre { background: #f4f6f8; padding: .6rem .8rem; overflow-x: auto; }
figure { display: inline-block; margin: 0 1rem 1rem 0; } img { max-width: 100%; border: 1px solid #ddd; }
.muted { color: #656d76; }
"""


def render(page: ReportPage) -> str:
    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(page.title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(page.title)}</h1>"]
    parts.append("<h2 id='winner'>The winner, and why</h2>")
    parts += [f"<p>{e(s)}</p>" for s in page.why]
    if page.validation:
        shown = ", ".join(f"{k.removeprefix('eval_')} {v:.4f}" for k, v in page.validation.items()
                          if k in _SHOWN_METRICS)
        parts.append(f"<p>Validation at that round: {e(shown)}.</p>")
    if page.held_out is not None:
        parts.append(_held_out(page.held_out))
    if page.commands:
        parts.append("<h2 id='commands'>Commands</h2>")
        for what, cmd in page.commands:
            parts.append(f"<p>To {e(what)}:</p><pre>{e(cmd)}</pre>")
    if page.links:
        parts.append("<h2 id='files'>Files</h2><ul>")
        parts += [f"<li>{e(x.label)}: <a href='{e(x.target, quote=True)}'>{e(x.shown)}</a></li>" for x in page.links]
        parts.append("</ul>")
    if page.rows:
        parts.append("<h2 id='trials'>Trials</h2>" + _trials(page.rows))
    if page.images:
        parts.append("<h2 id='plots'>Plots</h2>")
        for name, caption in PLOTS:
            if name in page.images:
                data = base64.b64encode(page.images[name]).decode()
                parts.append(f"<figure><img alt='{e(caption)}' src='data:image/png;base64,{data}'>"
                             f"<figcaption class='muted'>{e(caption)} ({e(name)})</figcaption></figure>")
    parts.append("<p class='muted'>Written by zerotune.</p></body></html>")
    return "\n".join(parts) + "\n"


def _held_out(h: HeldOut) -> str:
    e = html.escape
    where = f", scored through {e(h.url)}/v1/classify" if h.url else ""
    cols = [k for k in ("accuracy", "macro_f1") if k in h.model or k in h.baseline]
    head = "".join(f"<th>{e(c.replace('_', '-'))}</th>" for c in cols)
    body = ""
    for name, scores in ((h.model_name, h.model), (h.baseline_name, h.baseline)):
        cells = "".join(f"<td class='num'>{scores[c]:.4f}</td>" if c in scores else "<td></td>" for c in cols)
        body += f"<tr><td>{e(name)}</td>{cells}</tr>"
    return (f"<h2 id='held-out'>Held-out test</h2><p>{h.rows} rows the sweep never saw{where}.</p>"
            f"<table><tr><th></th>{head}</tr>{body}</table>")


def _trials(rows: list[dict[str, Any]]) -> str:
    e = html.escape
    cols = [c for c in rows[0] if c not in ("checkpoint", "error")]
    out = ["<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>"]
    for row in rows:
        cls = " class='winner'" if row.get("rank") == 1 else ""
        cells = []
        for c in cols:
            v = row.get(c)
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cells.append(f"<td{' class=num' if num else ''}>{e(_fmt(v))}</td>")
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    out.append("</table>")
    errors = [(r["trial_id"], r["error"]) for r in rows if r.get("error")]
    if errors:
        out.append("<p>Errors:</p><ul>" + "".join(
            f"<li><code>{e(str(t))}</code>: {e(str(err).splitlines()[0][:300])}</li>" for t, err in errors) + "</ul>")
    return "".join(out)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if value is True:
        return "yes"
    if value is False:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    return str(value)


def write(exp: Location, page: ReportPage) -> Location:
    """report.html in the sweep's (or run's) directory; returns where it is."""
    out = exp.join(REPORT_FILE)
    out.write_text(render(page))
    return out
