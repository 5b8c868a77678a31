"""configs/gpt2-124m.toml at its real size on CPU: the full 124M model at seq_len 1024 with
only the batch shrunk (one 1024-token sequence per step instead of 512), the in-loop
evaluation budget cut to one sequence and no HellaSwag file, and train.compile off (inductor
would add ~60 s on 2 cores; tests/test_train_compile.py covers compile). SIGTERM during
step 2 -> a 1.5 GB checkpoint and exit 3; the same command resumes and finishes step 3; the
checkpoint exports to Hugging Face format (transformers loads it and agrees on the logits)
and `python -m eval` scores its val loss.

Slow (~1-2 min on 2 shared cores): the one test that runs the shipped config's real shapes.
Prints the checkpoint's size and the save / load / export times (pytest -s shows them).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from _train_support import losses, shared_shards, state, wait_for
from conftest import REPO, subprocess_env
from eval.__main__ import main as eval_main
from pipeline.atomic import read_jsonl
from pipeline.checkpoint import checkpoint_dir, load_checkpoint, load_model
from pipeline.hf import main as hf_main
from train import EXIT_PREEMPTED

pytestmark = pytest.mark.slow

CONFIG = REPO / "configs" / "gpt2-124m.toml"


def trainer(run, data, **env) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "train", "--config", str(CONFIG), "--run-dir", str(run),
           f"--data.dir={data}", "--train.total_batch_size=1024", "--train.micro_batch_size=1",
           "--train.max_steps=3", "--train.compile=false", "--train.device=cpu",
           "--eval.val_tokens=1024", "--eval.hellaswag_path=", "--eval.num_samples=1", "--eval.sample_tokens=4"]
    return subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(OMP_NUM_THREADS="2", **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def saved_figures(out: str) -> list[tuple[float, float]]:
    return [(float(gb), float(s)) for gb, s in re.findall(r"saved \S+ \(([\d.]+) GB in ([\d.]+) s\)", out)]


def test_gpt2_124m_config_at_full_size_preempt_resume_export_eval(tmp_path_factory, tmp_path):
    transformers = pytest.importorskip("transformers")
    data = shared_shards(tmp_path_factory)
    run = tmp_path / "run"
    figures = {}

    proc = trainer(run, data)
    wait_for(lambda: len(losses(run)) >= 1 if (run / "metrics.jsonl").exists() else False, proc, timeout=600)
    proc.send_signal(signal.SIGTERM)  # during step 2
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    assert "124,439,808 params" in out and "1024 seq" in out
    assert json.loads((run / "exit.json").read_text())["step"] == 2
    figures["save"] = saved_figures(out)

    proc = trainer(run, data)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "resumed from" in out and "at step 2" in out
    figures["save"] += saved_figures(out)
    rows = losses(run)
    assert list(rows) == [1, 2, 3] and all(0 < rows[s] < 12 for s in rows)  # ln(50257) = 10.8 at init
    final = state(run, 3)
    assert final["loader"]["position"] == 3 and final["tokens_seen"] == 3 * 1024

    ckpt = checkpoint_dir(run, 3)
    size = sum(f.stat().st_size for f in ckpt.iterdir())
    assert size > 1.4e9  # fp32 weights + two AdamW moments of 124M parameters (+ the padded vocab)
    began = time.perf_counter()
    loaded, _ = load_checkpoint(ckpt, ("model", "optimizer"))
    figures["load_s"] = time.perf_counter() - began
    del loaded

    began = time.perf_counter()
    assert hf_main(["export", str(ckpt), str(tmp_path / "hf")]) == 0
    figures["export_s"] = time.perf_counter() - began
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ours, _ = load_model(ckpt)
    idx = torch.randint(0, 50257, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(hf(idx).logits, ours.eval()(idx)[0][..., :50257], atol=1e-3)
    del hf, ours

    began = time.perf_counter()
    assert eval_main(["--checkpoint", str(ckpt), "--tasks", "val", "--val-tokens", "2048", "--no-report"]) == 0
    figures["eval_s"] = time.perf_counter() - began
    val = [r for r in read_jsonl(run / "eval" / "results.jsonl") if r["metric"] == "val_loss"]
    assert len(val) == 1 and val[0]["step"] == 3 and 0 < val[0]["value"] < 12
    figures["checkpoint_gb"] = size / 1e9
    print(f"\n124M checkpoint figures (2 shared CPU cores): {json.dumps(figures)}")
