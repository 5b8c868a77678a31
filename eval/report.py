"""python -m eval.report RUN_DIR [--compare RUN_DIR ...]: report.md, report.html, plots/*.png.

report.md links the PNGs; report.html embeds them (base64), so it is one self-contained
file to copy off a cluster or attach to an issue. With --compare the plots overlay the
runs and the report has a table per run; everything is written into the first run's
eval/ directory.
"""

from __future__ import annotations

import base64
import html
import sys
import time
from pathlib import Path

from eval.plots import (HELLASWAG_REFERENCES, VAL_LOSS_REFERENCES, format_tokens, plot_bpb, plot_core,
                        plot_hellaswag, plot_loss)
from eval.rundata import RunData, load_run
from pipeline.atomic import atomic_write_text
from pipeline.cli import OneLineParser

PLOTS = (("loss", "Loss vs tokens", plot_loss), ("hellaswag", "HellaSwag acc_norm vs tokens", plot_hellaswag),
         ("bpb", "Validation bits per byte vs tokens", plot_bpb), ("core", "CORE vs tokens", plot_core))
# Drawn only once a run has a point for them (older runs have neither).
OPTIONAL = {"bpb": lambda run: run.bpb_inloop or run.bpb_eval, "core": lambda run: run.core_eval}
SAMPLE_STEPS = 3  # the latest steps whose generated samples are shown


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(run: RunData) -> tuple[list[str], list[list[str]]]:
    head = ["step", "tokens", "val loss", "val bpb", "HellaSwag acc", "acc_norm", "n", "CORE", "checkpoint", "sha256"]
    body = []
    for row in run.table():
        tokens = format_tokens(row["tokens"]) if row.get("tokens") is not None else "—"
        body.append([str(row["step"]), tokens, _fmt(row.get("val_loss")), _fmt(row.get("val_bpb")),
                     _fmt(row.get("hellaswag_acc")), _fmt(row.get("hellaswag_acc_norm")), _fmt(row.get("n")),
                     _fmt(row.get("core")), "on disk" if row["on_disk"] else "pruned", (row.get("sha256") or "—")[:12]])
    for name, value in run.untimed("val_loss"):
        body.append([name, "—", _fmt(value), "", "", "", "", "", "", ""])
    for name, value in run.untimed("hellaswag_acc_norm"):
        body.append([name, "—", "", "", "", _fmt(value), "", "", "", ""])
    for name, value in run.untimed("core"):
        body.append([name, "—", "", "", "", "", "", _fmt(value), "", ""])
    return head, body


def _summary(run: RunData) -> list[str]:
    lines = []
    cfg = run.config
    if cfg:
        m, t = cfg.model, cfg.train
        lines.append(f"model {m.n_layer} layers × {m.n_head} heads × {m.n_embd} wide, block {m.block_size}; "
                     f"{t.total_batch_size:,} tokens/step × {t.max_steps:,} steps "
                     f"= {format_tokens(t.total_batch_size * t.max_steps)} tokens; data {cfg.data.dir}")
    if run.train:
        tokens, loss = run.train[-1]
        lines.append(f"last train loss {loss:.4f} at {format_tokens(tokens)} tokens")
    table = run.table()
    evaluated = [r for r in table if "val_loss" in r or "hellaswag_acc_norm" in r or "core" in r]
    if evaluated:
        r = evaluated[-1]
        lines.append(f"latest evaluated checkpoint: step {r['step']}: val loss {_fmt(r.get('val_loss'))} "
                     f"({_fmt(r.get('val_bpb'))} bits/byte), HellaSwag acc_norm {_fmt(r.get('hellaswag_acc_norm'))} "
                     f"(n={_fmt(r.get('n'))})" + (f", CORE {_fmt(r['core'])}" if "core" in r else ""))
    if run.unreadable_lines:
        lines.append(f"{run.unreadable_lines} unreadable line(s) in metrics.jsonl/results.jsonl were skipped")
    return lines


def _samples(run: RunData) -> list[tuple[int, list[str]]]:
    by_step: dict[int, list[str]] = {}
    for step, text in run.samples:
        by_step.setdefault(step, []).append(text)
    steps = sorted(s for s in by_step if s is not None)[-SAMPLE_STEPS:]
    return [(s, by_step[s]) for s in reversed(steps)]


def _references() -> list[str]:
    return [label for _, label in VAL_LOSS_REFERENCES + HELLASWAG_REFERENCES[:2]]


def _no_data(title: str) -> str:
    return f"No {title.split(' vs ')[0]} results yet: the plot appears with the first evaluated point."


def render_markdown(runs: list[RunData], plots: dict[str, Path], when: str) -> str:
    out = [f"# Evaluation report: {', '.join(r.name for r in runs)}", "", f"Generated {when}.", ""]
    for name, title, _ in PLOTS:
        if name in plots:
            out += [f"## {title}", "", f"![{title}](plots/{plots[name].name})", ""]
        elif name not in OPTIONAL:
            out += [f"## {title}", "", _no_data(title), ""]
    out += ["Dashed reference lines: " + "; ".join(_references()) + ".", ""]
    for run in runs:
        out += [f"## Run {run.name}", ""] + [f"- {line}" for line in _summary(run)] + [""]
        head, body = _table(run)
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body] + [""]
        for step, texts in _samples(run):
            out += [f"### Samples at step {step}", ""]
            for text in texts:
                out += ["```text", text.replace("```", "'''"), "```", ""]
    return "\n".join(out)


def render_html(runs: list[RunData], plots: dict[str, Path], when: str) -> str:
    e = html.escape
    out = ["<!doctype html><html><head><meta charset='utf-8'>",
           f"<title>Evaluation report: {e(', '.join(r.name for r in runs))}</title><style>",
           "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}",
           "table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;"
           "text-align:right}th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f6f6;padding:8px;"
           "white-space:pre-wrap}</style></head><body>",
           f"<h1>Evaluation report: {e(', '.join(r.name for r in runs))}</h1><p>Generated {e(when)}.</p>"]
    for name, title, _ in PLOTS:
        if name not in plots:
            if name not in OPTIONAL:
                out.append(f"<h2>{e(title)}</h2><p>{e(_no_data(title))}</p>")
            continue
        data = base64.b64encode(plots[name].read_bytes()).decode()
        out.append(f"<h2>{e(title)}</h2><img alt='{e(title)}' src='data:image/png;base64,{data}'>")
    out.append(f"<p>Dashed reference lines: {e('; '.join(_references()))}.</p>")
    for run in runs:
        out.append(f"<h2>Run {e(run.name)}</h2><ul>" + "".join(f"<li>{e(s)}</li>" for s in _summary(run)) + "</ul>")
        head, body = _table(run)
        out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
        out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in body]
        out.append("</table>")
        for step, texts in _samples(run):
            out.append(f"<h3>Samples at step {step}</h3>" + "".join(f"<pre>{e(t)}</pre>" for t in texts))
    out.append("</body></html>")
    return "\n".join(out)


def write_report(run_dir: str | Path, compare: list[str | Path] = ()) -> list[Path]:
    """Write RUN/eval/report.md, report.html and plots/; returns their paths (md first)."""
    run_dir = Path(run_dir)
    runs = [load_run(run_dir)] + [load_run(p) for p in compare]
    out = run_dir / "eval"
    suffix = "_compare" if compare else ""
    plots = {name: out / "plots" / f"{name}{suffix}.png" for name, _, _ in PLOTS
             if name not in OPTIONAL or any(OPTIONAL[name](run) for run in runs)}
    for name, _, draw in PLOTS:
        if name in plots and not draw(runs, plots[name]):
            plots.pop(name).unlink(missing_ok=True)  # and no stale picture from an earlier report
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    md, page = out / f"report{suffix}.md", out / f"report{suffix}.html"
    atomic_write_text(md, render_markdown(runs, plots, when))
    atomic_write_text(page, render_html(runs, plots, when))
    return [md, page, *plots.values()]


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m eval.report", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="the run whose eval/ directory receives the report")
    p.add_argument("--compare", nargs="+", default=[], metavar="RUN_DIR", help="more runs to overlay")
    args = p.parse_args(argv)
    for path in [args.run_dir, *args.compare]:
        if not Path(path).is_dir():
            print(f"error: {path}: no such run directory", file=sys.stderr)
            return 2
    for path in write_report(args.run_dir, args.compare):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
