"""`python -m pipeline status RUN`: where a run stands, read from the files it left.

    data       data/demo: 10 shards (1 val, 9 train), 612,173 tokens, complete
    train      step 300 / 300 (100%), 307,200 tokens seen, train loss 5.12
    checkpoint runs/demo/checkpoints/step_000300 (3 kept: 100, 200, 300)
    val loss   5.31 at step 300 (eval)
    hellaswag  acc_norm 0.2600 (n=200) at step 300 (eval)
    eval       3/3 checkpoints evaluated; report runs/demo/eval/report.html

Reads only: config.toml, the shard manifest, checkpoints/, metrics.jsonl and
eval/results.jsonl. Safe to run while the trainer is writing (torn last lines are ignored).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.atomic import read_jsonl
from pipeline.checkpoint import CheckpointError, list_checkpoints, read_state, step_of
from pipeline.cli import OneLineParser
from pipeline.config import Config, ConfigError, load_toml
from pipeline.commands.orchestrate import REPORT, RESULTS, evaluated_steps, format_seconds
from pipeline.shards import ShardError, load_shard_set, read_manifest


class StatusError(RuntimeError):
    """The directory is not a run directory."""


def _config(run_dir: Path) -> Config:
    if (run_dir / "config.toml").is_file():
        return load_toml(run_dir / "config.toml")
    raise StatusError(f"{run_dir}: no config.toml, not a run directory (the trainer writes it on start)")


def data_status(data_dir: str) -> dict:
    info: dict = {"dir": data_dir, "state": "missing"}
    try:
        manifest = read_manifest(data_dir)
        if manifest is None:
            shards = [{"split": s.split, "tokens": s.tokens} for s in load_shard_set(data_dir).shards]
            info["state"] = "no manifest (build-nanogpt shards)"
        else:
            shards = manifest.get("shards", [])
            info["state"] = "complete" if manifest.get("complete") is True else "incomplete (data_prep still running or stopped)"
    except ShardError as err:
        if Path(data_dir).exists():
            info["state"] = f"unreadable: {err}"
        return info
    info["shards"] = len(shards)
    for split in ("train", "val"):
        info[f"{split}_shards"] = sum(1 for s in shards if s["split"] == split)
        info[f"{split}_tokens"] = sum(int(s["tokens"]) for s in shards if s["split"] == split)
    return info


def _last(rows: list[dict], kind: str) -> dict | None:
    matching = [r for r in rows if r.get("kind") == kind]
    return max(matching, key=lambda r: r.get("step", -1)) if matching else None


def eval_metrics(run_dir: Path) -> dict[str, dict]:
    """The newest eval/results.jsonl value per metric: {metric: row}."""
    latest: dict[str, dict] = {}
    for row in read_jsonl(run_dir / RESULTS):
        metric, step = row.get("metric"), row.get("step")
        if metric is None or not isinstance(step, int):
            continue
        if metric not in latest or step >= latest[metric]["step"]:
            latest[metric] = row
    return latest


def run_status(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise StatusError(f"{run_dir}: no such run directory")
    cfg = _config(run_dir)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    checkpoints = list_checkpoints(run_dir)
    status: dict = {"run_dir": str(run_dir), "data": data_status(cfg.data.dir)}

    train: dict = {"max_steps": cfg.train.max_steps, "checkpoints": [step_of(p) for p in checkpoints]}
    if checkpoints:
        state = read_state(checkpoints[-1])
        train.update(checkpoint=str(checkpoints[-1]), checkpoint_step=state.get("step"),
                     tokens_seen=state.get("tokens_seen"))
    last_train = _last(metrics, "train")
    if last_train:
        train.update(step=last_train["step"], loss=last_train.get("loss"), tokens=last_train.get("tokens"),
                     tok_per_s=last_train.get("tok_per_s"))
        recent = [r["dt_ms"] for r in metrics if r.get("kind") == "train" and r.get("dt_ms")][-50:]
        if recent and last_train["step"] < cfg.train.max_steps:
            train["eta_s"] = (cfg.train.max_steps - last_train["step"]) * sum(recent) / len(recent) / 1000
    status["train"] = train

    evaluated = eval_metrics(run_dir)
    status["val"] = _pick(_last(metrics, "val"), evaluated.get("val_loss"), "loss")
    status["hellaswag"] = _pick(_last(metrics, "hellaswag"), evaluated.get("hellaswag_acc_norm"), "acc_norm")
    done = evaluated_steps(run_dir)
    report = run_dir / REPORT
    status["eval"] = {"checkpoints": len(checkpoints), "evaluated": sum(step_of(p) in done for p in checkpoints),
                      "report": str(report.with_suffix(".html")) if report.is_file() else None}
    return status


def _pick(in_loop: dict | None, evaluated: dict | None, key: str) -> dict | None:
    """The newer of the trainer's in-loop value and the evaluator's, with where it came from."""
    options = []
    if in_loop is not None and key in in_loop:
        options.append({"step": in_loop["step"], "value": in_loop[key], "n": in_loop.get("n"), "source": "train"})
    if evaluated is not None:
        options.append({"step": evaluated["step"], "value": evaluated["value"], "n": evaluated.get("n"),
                        "source": "eval"})
    return max(options, key=lambda o: (o["step"], o["source"] == "eval")) if options else None


def format_status(s: dict) -> str:
    d, t, e = s["data"], s["train"], s["eval"]
    lines = [f"run        {s['run_dir']}"]
    if "shards" in d:
        lines.append(f"data       {d['dir']}: {d['shards']} shards ({d['val_shards']} val, {d['train_shards']} train), "
                     f"{d['train_tokens'] + d['val_tokens']:,} tokens, {d['state']}")
    else:
        lines.append(f"data       {d['dir']}: {d['state']}")
    if "step" in t:
        pct = 100 * t["step"] / t["max_steps"]
        line = f"train      step {t['step']:,} / {t['max_steps']:,} ({pct:.0f}%)"
        if t.get("tokens") is not None:
            line += f", {t['tokens']:,} tokens seen"
        if t.get("loss") is not None:
            line += f", train loss {t['loss']:.4f}"
        if t.get("tok_per_s"):
            line += f", {t['tok_per_s']:,.0f} tok/s"
        if t.get("eta_s"):
            line += f", ~{format_seconds(t['eta_s'])} to go"
        lines.append(line)
    else:
        lines.append(f"train      not started (0 / {t['max_steps']:,} steps)")
    if t.get("checkpoint"):
        steps = ", ".join(str(x) for x in t["checkpoints"])
        seen = f", {t['tokens_seen']:,} tokens seen" if t.get("tokens_seen") is not None else ""
        lines.append(f"checkpoint {t['checkpoint']}{seen} (kept: {steps})")
    else:
        lines.append("checkpoint none yet")
    for label, key, name in (("val loss  ", "val", ""), ("hellaswag ", "hellaswag", "acc_norm ")):
        m = s[key]
        if m is None:
            lines.append(f"{label} none yet")
            continue
        n = f" (n={m['n']:,})" if m.get("n") else ""
        lines.append(f"{label} {name}{m['value']:.4f}{n} at step {m['step']:,} ({m['source']})")
    report = f"; report {e['report']}" if e["report"] else ""
    lines.append(f"eval       {e['evaluated']}/{e['checkpoints']} checkpoints evaluated{report}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m pipeline status", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="run directory, e.g. runs/gpt2-124m")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    args = p.parse_args(argv)
    try:
        status = run_status(args.run_dir)
    except (StatusError, ConfigError, CheckpointError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0
