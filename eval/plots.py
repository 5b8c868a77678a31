"""The report's PNG plots (matplotlib, headless): losses, bits-per-byte, HellaSwag and CORE
against tokens seen.

Each plot function draws one or more runs (compare mode overlays them, one colour per
run), adds dashed reference lines for published baselines, and returns {label: number
of points} of the series it drew, so tests can check what a picture contains without
reading pixels (a horizontal line counts as one point). A plot with no data point of its
own (reference lines only) is not drawn at all: it returns {} and the report says so.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on compute nodes without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import Formatter, MaxNLocator  # noqa: E402

from eval.rundata import RunData  # noqa: E402
from pipeline.atomic import atomic_write_bytes  # noqa: E402

# Published numbers (see shared/data/README.md): completion-style HellaSwag on the 10,042
# validation rows, and GPT-2 124M's loss on the FineWeb-Edu sample-10BT val shard.
VAL_LOSS_REFERENCES = [(3.2924, "GPT-2 124M val loss on FineWeb-Edu (3.2924)")]
HELLASWAG_REFERENCES = [(0.2955, "GPT-2 124M HellaSwag acc_norm (0.2955)"),
                        (0.337, "GPT-3 124M HellaSwag acc_norm (0.337)"),
                        (0.25, "random chance (0.25)")]
REFERENCE_STYLES = [dict(color="0.35", linestyle="--"), dict(color="0.55", linestyle="-."),
                    dict(color="0.7", linestyle=":")]


def format_tokens(value: float, spacing: float = 0.0, top: float | None = None) -> str:
    """1.23M-style token counts. With the tick `spacing` (and the axis' largest |value|
    `top`, so every tick shares one suffix) it keeps just enough decimals for neighbouring
    ticks to read differently: 1.0005M next to 1.001M, never 1M next to 1M."""
    top = abs(value) if top is None else top
    scale, suffix = next(((s, x) for s, x in ((1e9, "B"), (1e6, "M"), (1e3, "k")) if top >= s), (1.0, ""))
    if spacing <= 0:
        return f"{value / scale:.3g}{suffix}" if scale > 1 else f"{value:.0f}"
    step = spacing / scale
    decimals = max(0, math.ceil(-math.log10(step) - 1e-9))
    while decimals < 6 and abs(round(step, decimals) - step) > 1e-9 * step:  # 2.5-steps need one more
        decimals += 1
    return f"{value / scale:.{decimals}f}{suffix}"


class TokenTicks(Formatter):
    def format_ticks(self, values) -> list[str]:
        locs = sorted(values)
        spacing = min((b - a for a, b in zip(locs, locs[1:])), default=0.0)
        top = max((abs(v) for v in locs), default=0.0)
        return [format_tokens(v, spacing, top) for v in values]

    def __call__(self, value: float, pos: int | None = None) -> str:  # e.g. the cursor readout
        return format_tokens(value)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centered moving average that shrinks at the ends (no lag, no edge droop)."""
    if window <= 1 or len(values) < 3:
        return values
    # np.convolve(mode="same") returns max(len, window) values: keep the window odd and <= len.
    window = min(window, len(values) if len(values) % 2 else len(values) - 1)
    kernel = np.ones(window)
    sums = np.convolve(values, kernel, mode="same")
    counts = np.convolve(np.ones_like(values), kernel, mode="same")
    return sums / counts


def _new_axes(title: str, ylabel: str):
    fig, ax = plt.subplots(figsize=(9, 5.2), dpi=110)
    ax.set_title(title)
    ax.set_xlabel("tokens seen in training")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # tokens are whole: no 0.2-token ticks
    ax.xaxis.set_major_formatter(TokenTicks())
    ax.grid(True, alpha=0.3)
    return fig, ax


def _references(ax, references) -> dict[str, int]:
    labels = {}
    for (value, label), style in zip(references, REFERENCE_STYLES):
        ax.axhline(value, linewidth=1.3, label=label, **style)
        labels[label] = 1
    return labels


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def _finish(fig, ax, path: Path, labels: dict[str, int], references) -> dict[str, int]:
    """Add the reference lines and save; nothing is written when no series has a point."""
    if not labels:
        plt.close(fig)
        return {}
    labels.update(_references(ax, references))
    ax.legend(loc="best", fontsize=8, framealpha=0.85)
    _save(fig, path)
    return labels


def _label(run: RunData, series: str, many: bool) -> str:
    return f"{run.name}: {series}" if many else series


def plot_loss(runs: list[RunData], path: Path) -> dict[str, int]:
    """Train loss (raw, faint; smoothed, solid) and val loss (in-loop line, eval markers)."""
    fig, ax = _new_axes("Loss", "cross-entropy loss (nats/token)")
    many, labels, seen, trains = len(runs) > 1, {}, [], []
    for i, run in enumerate(runs):
        color = f"C{i}"
        if run.train:
            x, y = np.array(run.train).T
            window = min(len(y), max(5, len(y) // 50)) | 1  # odd, so the mean is centred
            raw, smoothed = (_label(run, "train loss (raw)", many),
                             _label(run, f"train loss (smoothed, {window}-point mean)", many))
            ax.plot(x, y, color=color, alpha=0.35, linewidth=0.8, label=raw)
            ax.plot(x, smooth(y, window), color=color, linewidth=2.0, label=smoothed)
            labels[raw] = labels[smoothed] = len(y)
            trains += list(y)
        for source, series, style in (("in-loop", run.val_inloop, dict(linestyle="--", marker=None)),
                                      ("eval", run.val_eval, dict(linestyle="none", marker="o"))):
            label = _label(run, f"val loss ({source})", many)
            if series:
                x, y = np.array(series).T
                ax.plot(x, y, color=color, linewidth=1.6, markersize=5, label=label, **style)
                labels[label] = len(y)
                seen += list(y)
        for name, value in run.untimed("val_loss"):  # e.g. --hf gpt2: no training position
            label = _label(run, f"val loss of {name} ({value:.4f})", many)
            ax.axhline(value, color=color, linewidth=1.5, linestyle=(0, (6, 2, 1, 2)), label=label)
            labels[label] = 1
            seen.append(value)
    if seen or trains:
        low = min(seen + trains + [VAL_LOSS_REFERENCES[0][0]])
        # Hide the first steps' ~11 nats of train loss once training has gone far below
        # them; every val point stays in view.
        top = max(([min(max(trains), 2 * low)] if trains else []) + seen)
        ax.set_ylim(low * 0.97, top * 1.02)
    return _finish(fig, ax, path, labels, VAL_LOSS_REFERENCES)


def plot_hellaswag(runs: list[RunData], path: Path) -> dict[str, int]:
    """HellaSwag acc_norm: in-loop (possibly on a --limit subset) and from eval."""
    fig, ax = _new_axes("HellaSwag (completion style, acc_norm)", "acc_norm")
    many, labels, seen = len(runs) > 1, {}, [0.25, 0.337]
    for i, run in enumerate(runs):
        color = f"C{i}"
        for source, series, style in (("in-loop", run.hellaswag_inloop, dict(linestyle="--", marker=".")),
                                      ("eval", run.hellaswag_eval, dict(linestyle="-", marker="o"))):
            if series:
                x, y, n = np.array(series).T
                ns = sorted({int(v) for v in n})
                label = _label(run, f"acc_norm ({source}, n={'/'.join(map(str, ns))})", many)
                ax.plot(x, y, color=color, linewidth=1.6, markersize=5, label=label, **style)
                labels[label] = len(y)
                seen += list(y)
        for name, value in run.untimed("hellaswag_acc_norm"):
            label = _label(run, f"acc_norm of {name} ({value:.4f})", many)
            ax.axhline(value, color=color, linewidth=1.5, linestyle=(0, (6, 2, 1, 2)), label=label)
            labels[label] = 1
            seen.append(value)
    ax.set_ylim(min(seen) - 0.03, max(seen) + 0.03)
    return _finish(fig, ax, path, labels, HELLASWAG_REFERENCES)


def plot_bpb(runs: list[RunData], path: Path) -> dict[str, int]:
    """Validation bits per byte (in-loop line, eval markers): the loss normalised by the
    bytes of text, comparable across tokenizers."""
    fig, ax = _new_axes("Validation bits per byte", "bits per UTF-8 byte")
    many, labels = len(runs) > 1, {}
    for i, run in enumerate(runs):
        for source, series, style in (("in-loop", run.bpb_inloop, dict(linestyle="--", marker=None)),
                                      ("eval", run.bpb_eval, dict(linestyle="none", marker="o"))):
            if series:
                x, y = np.array(series).T
                label = _label(run, f"val bpb ({source})", many)
                ax.plot(x, y, color=f"C{i}", linewidth=1.6, markersize=5, label=label, **style)
                labels[label] = len(y)
    return _finish(fig, ax, path, labels, ())


def plot_core(runs: list[RunData], path: Path) -> dict[str, int]:
    """CORE (mean centered accuracy, thick) and each task's centered accuracy (thin)."""
    fig, ax = _new_axes("CORE and per-task centered accuracy", "centered accuracy")
    many, labels = len(runs) > 1, {}
    for i, run in enumerate(runs):
        tasks = sorted(k for k in run.core_eval if k != "core")
        for j, name in enumerate(["core"] + tasks):
            if name not in run.core_eval:
                continue
            x, y = np.array(sorted(run.core_eval[name])).T
            label = _label(run, "CORE" if name == "core" else name, many)
            style = (dict(color=f"C{i}", linewidth=2.6, marker="o") if name == "core" else
                     dict(color=f"C{(i + j) % 10}", linewidth=0.9, alpha=0.6, marker="."))
            ax.plot(x, y, label=label, **style)
            labels[label] = len(y)
    ax.axhline(0.0, color="0.6", linestyle=":", linewidth=1.0)
    return _finish(fig, ax, path, labels, ())
