"""One acceptance command for a GPU machine (and, on a small model, for a CPU):

    python bench/gpu_check.py [--out gpu_check.json] [--hellaswag data/hellaswag/hellaswag_val.jsonl]
    torchrun --standalone --nproc_per_node=8 bench/gpu_check.py

Checks, in order (each one a row of the printed table and an entry of the JSON file):
1. flash: the flash SDPA kernel runs the model's attention (forward + backward with
   torch.nn.attention.sdpa_kernel restricted to FLASH_ATTENTION: any other kernel choice
   would raise "No available kernel").
2. throughput: the real GPT-2 124M (train.dtype auto = bf16 autocast on CUDA, fused AdamW,
   DDP under torchrun) with and without torch.compile, micro batch 16 / 32 / 64 at seq 1024
   (larger ones are skipped after an out-of-memory): tok/s, MFU, peak memory next to
   train/plan.py's estimate. The no-compile row is the reference measured in the same run.
3. resume: the real trainer (`python -m train`, or torchrun on N GPUs) for 30 steps
   uninterrupted, and again with a SIGTERM a few steps in and a resume with the same
   command: the continuation's losses must match the uninterrupted run's (exactly on CPU;
   within 0.02 on CUDA, where bf16 kernels with atomics are not bitwise reproducible).
4. hellaswag: HellaSwag-format rows scored on the resumed run's final checkpoint (ex/s);
   generated rows unless --hellaswag names a real file. (The checkpoint has seen 30 steps:
   the accuracy is chance; the figure is the speed and that the path works.)
On CPU (no GPU visible) the same checks run on a 2-layer model at seq 128 and micro batch
2 / 4 / 8, in a minute or two. Reference (llm.c): GPT-2 124M trains at ~230k tok/s per
A100 80GB; an H100 should give >= 2x that. Exit code: 0 when every check passed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.checkpoint import latest_checkpoint, load_model  # noqa: E402
from pipeline.config import from_dict  # noqa: E402
from pipeline.distributed import close, init_distributed  # noqa: E402
from pipeline.hellaswag import evaluate_hellaswag, load_hellaswag  # noqa: E402
from pipeline.model import GPT  # noqa: E402
from pipeline.optimizer import build_optimizer  # noqa: E402
from pipeline.shards import FORMAT, FORMAT_VERSION, shard_filename, write_manifest  # noqa: E402
from pipeline.tokenizer import EOT, get_tokenizer, tokenizer_fingerprint  # noqa: E402
from pipeline.atomic import read_jsonl, sha256_file  # noqa: E402
from train.metrics import mfu, peak_flops  # noqa: E402
from train.plan import memory  # noqa: E402
from train.precision import set_tf32  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GPU = dict(model=dict(n_layer=12, n_head=12, n_embd=768, block_size=1024), seq=1024, micro=(16, 32, 64),
           warmup=3, timed=10, hellaswag_rows=2000, tolerance=0.02)
CPU = dict(model=dict(n_layer=2, n_head=2, n_embd=64, block_size=192), seq=128, micro=(2, 4, 8),
           warmup=1, timed=3, hellaswag_rows=40, tolerance=0.0)
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                 "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def config(spec: dict, micro: int, world: int, compile_: bool, **train):
    return from_dict({"model": spec["model"],
                      "train": {"total_batch_size": micro * spec["seq"] * world, "micro_batch_size": micro,
                                "seq_len": spec["seq"], "compile": compile_, **train}}).validate()


# -- 1. flash attention ----------------------------------------------------------------

def check_flash(spec: dict, device: torch.device) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    cfg = config(spec, spec["micro"][0], 1, False)
    model = GPT(cfg.model).to(device)
    idx = torch.randint(0, 50257, (2, spec["seq"] + 1), device=device)
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), autocast:
            _, loss = model(idx[:, :-1], idx[:, 1:])
            loss.backward()
            h = cfg.model.n_embd // cfg.model.n_head
            q = torch.randn(2, cfg.model.n_head, spec["seq"], h, device=device,
                            dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
            F.scaled_dot_product_attention(q, q, q, is_causal=True)
    except RuntimeError as err:
        return {"ok": False, "error": str(err).splitlines()[0][:300]}
    return {"ok": True, "kernel": "FLASH_ATTENTION", "dtype": str(q.dtype).removeprefix("torch.")}


# -- 2. throughput ---------------------------------------------------------------------

def _measure(spec: dict, env, micro: int, compile_: bool) -> dict:
    device, world = env.device, env.world_size
    cfg = config(spec, micro, world, compile_)
    torch.manual_seed(0)
    model = GPT(cfg.model).to(device)
    optimizer, fused = build_optimizer(model, cfg.optim, device.type)
    train_model = torch.compile(model, dynamic=False) if compile_ else model
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP
        train_model = DDP(train_model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    batch = torch.randint(0, 50257, (micro, spec["seq"] + 1), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        with autocast:
            _, loss = train_model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss
    began = time.perf_counter()
    for _ in range(spec["warmup"]):
        step()
    sync()
    first = time.perf_counter() - began
    began = time.perf_counter()
    for _ in range(spec["timed"]):
        loss = step()
    sync()
    seconds = time.perf_counter() - began
    tok_s = spec["timed"] * micro * spec["seq"] * world / seconds
    out = {"micro": micro, "compile": compile_, "tok_per_s": round(tok_s), "warmup_s": round(first, 1),
           "loss": round(loss.item(), 3), "fused_adamw": fused,
           "mfu": mfu(model.flops_per_token(spec["seq"]), tok_s, peak_flops(device), world),
           "est_peak_gib": round(memory(cfg, micro, world)["total"] / 2**30, 1)}
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 1)
    return out


def check_throughput(spec: dict, env, modes: list[bool]) -> dict:
    rows = []
    for compile_ in modes:
        for micro in spec["micro"]:
            try:
                rows.append(_measure(spec, env, micro, compile_))
            except torch.OutOfMemoryError:
                rows.append({"micro": micro, "compile": compile_, "oom": True})
                break  # a larger micro batch will not fit either
            finally:
                torch._dynamo.reset()
                if env.device.type == "cuda":
                    torch.cuda.empty_cache()
    ok = all(r.get("tok_per_s", 0) > 0 for r in rows if not r.get("oom")) and any("tok_per_s" in r for r in rows)
    return {"ok": ok, "rows": rows}


# -- 3. preemption and resume with the real trainer ------------------------------------

def write_shards(directory: Path, tokens_needed: int) -> Path:
    """Real text (the demo corpus: Python's own docs), repeated to the needed length, so the
    loss visibly falls in 30 steps."""
    from pipeline.commands.demo_corpus import demo_documents
    enc, ids = get_tokenizer(), []
    for doc in demo_documents():
        ids += [EOT] + enc.encode_ordinary(doc.text)
        if len(ids) > 300_000:
            break
    reps = -(-(tokens_needed + 20_000) // len(ids))
    tokens = np.array((ids * reps)[: tokens_needed + 20_000], dtype=np.uint16)
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, part in enumerate((tokens[:20_000], tokens[20_000:])):
        name = shard_filename("check", "val" if index == 0 else "train", index)
        np.save(directory / name, part)
        entries.append({"file": name, "split": "val" if index == 0 else "train", "tokens": len(part),
                        "documents": None, "sha256": sha256_file(directory / name)})
    write_manifest(directory, {"format": FORMAT, "version": FORMAT_VERSION, "tokenizer": tokenizer_fingerprint(),
                               "complete": True, "source": {"files": "bench/gpu_check.py: demo corpus"},
                               "shards": entries})
    return directory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trainer(nproc: int, cfg_path: Path, run: Path) -> subprocess.Popen:
    if nproc == 1:
        cmd = [sys.executable, "-m", "train"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               f"--master_port={_free_port()}", "-m", "train"]
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS and not k.startswith("TORCHELASTIC_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen([*cmd, "--config", str(cfg_path), "--run-dir", str(run)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _losses(run: Path) -> dict[int, float]:
    path = run / "metrics.jsonl"
    return {r["step"]: r["loss"] for r in read_jsonl(path) if r["kind"] == "train"} if path.exists() else {}


def check_resume(spec: dict, nproc: int, device: torch.device, work: Path, steps: int, compile_: bool) -> dict:
    micro = spec["micro"][0]
    data = write_shards(work / "data", steps * micro * spec["seq"] * nproc + 1)
    cfg = config(spec, micro, nproc, compile_, max_steps=steps, checkpoint_every=steps, log_every=1,
                 device=device.type)
    cfg.data.dir = str(data)
    cfg.optim.warmup_steps = 5
    cfg.optim.max_lr = 1e-3
    cfg.eval.eval_every = 0
    cfg.eval.sample_every = 0
    cfg_path = work / "check.toml"
    cfg_path.write_text(cfg.to_toml())
    began = time.perf_counter()
    straight = _trainer(nproc, cfg_path, work / "straight")
    out, err = straight.communicate()
    if straight.returncode != 0:
        return {"ok": False, "error": f"uninterrupted run exited {straight.returncode}: {err[-500:]}"}
    run = work / "resumed"
    proc = _trainer(nproc, cfg_path, run)
    while len(_losses(run)) < 3 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    stopped = json.loads((run / "exit.json").read_text()) if (run / "exit.json").exists() else {}
    if proc.returncode != 3:
        return {"ok": False, "error": f"SIGTERMed run exited {proc.returncode} (want 3): {err[-500:]}"}
    proc = _trainer(nproc, cfg_path, run)
    _, err = proc.communicate()
    if proc.returncode != 0:
        return {"ok": False, "error": f"resumed run exited {proc.returncode}: {err[-500:]}"}
    want, got = _losses(work / "straight"), _losses(run)
    diff = max(abs(got[s] - want[s]) for s in want) if got.keys() == want.keys() else float("inf")
    return {"ok": diff <= spec["tolerance"], "steps": steps, "stopped_at": stopped.get("step"),
            "max_abs_loss_diff": diff, "tolerance": spec["tolerance"], "first_loss": round(want[1], 3),
            "last_loss": round(want[steps], 3), "seconds": round(time.perf_counter() - began, 1),
            "checkpoint": str(latest_checkpoint(run))}


# -- 4. HellaSwag-format scoring -----------------------------------------------------------

def generated_rows(path: Path, n: int) -> Path:
    """HellaSwag-format rows from a fixed word list: the format and lengths, not the content."""
    rng = random.Random(0)
    words = ("the a man woman dog ball kitchen water runs takes puts opens looks then slowly "
             "carefully into over under while table door car road camera shows").split()
    with open(path, "w") as f:
        for i in range(n):
            sentence = lambda k: " ".join(rng.choice(words) for _ in range(k))  # noqa: E731
            f.write(json.dumps({"ind": i, "ctx": sentence(rng.randint(20, 60)).capitalize() + ".",
                                "endings": [sentence(rng.randint(8, 25)) + "." for _ in range(4)],
                                "label": rng.randrange(4)}) + "\n")
    return path


def check_hellaswag(checkpoint: str, device: torch.device, path: str | None, rows: int, work: Path) -> dict:
    source = path or str(generated_rows(work / "hellaswag_generated.jsonl", rows))
    examples = load_hellaswag(source, limit=rows)
    model, _ = load_model(checkpoint, map_location=device)
    model.to(device).eval()
    dtype = torch.bfloat16 if device.type == "cuda" else None
    evaluate_hellaswag(model, examples[:8], device, dtype)  # warm-up (kernels, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    result = evaluate_hellaswag(model, examples, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    return {"ok": result["n"] == len(examples), "rows": "file " + path if path else "generated", "n": result["n"],
            "ex_per_s": round(len(examples) / seconds, 1), "acc_norm": round(result["acc_norm"], 4)}


# -- driver ----------------------------------------------------------------------------

def table(report: dict) -> str:
    lines = [f"gpu_check on {report['device']} x {report['world_size']} (torch {report['torch']})",
             f"{'check':<12} {'result':<6} figures"]
    for name, res in report["checks"].items():
        status = "pass" if res.get("ok") else "FAIL"
        if name == "throughput":
            lines.append(f"{name:<12} {status}")
            for r in res["rows"]:
                mode = "compile" if r["compile"] else "eager  "
                if r.get("oom"):
                    lines.append(f"    {mode} micro {r['micro']:>3}: out of memory")
                    continue
                m = f"MFU {r['mfu']:.1%}" if r.get("mfu") else "MFU n/a"
                mem = (f"peak {r['peak_gib']} GiB (est. {r['est_peak_gib']})" if "peak_gib" in r
                       else f"peak n/a on CPU (plan: {r['est_peak_gib']} GiB)")
                lines.append(f"    {mode} micro {r['micro']:>3}: {r['tok_per_s']:>10,} tok/s  {m:<10} {mem}  "
                             f"first {r['warmup_s']} s")
        else:
            figures = ", ".join(f"{k} {v}" for k, v in res.items() if k != "ok")
            lines.append(f"{name:<12} {status:<6} {figures}")
    lines.append(f"total {report['elapsed_s']} s; reference (llm.c): ~230k tok/s per A100 for GPT-2 124M")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_check.json", help="the JSON report (default gpu_check.json)")
    p.add_argument("--hellaswag", help="a real HellaSwag jsonl to score (default: generated rows)")
    p.add_argument("--steps", type=int, default=30, help="steps of the resume check (default 30)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows and compile in resume")
    p.add_argument("--work", help="directory for the resume check's runs (default: a temporary one)")
    args = p.parse_args(argv)
    began = time.perf_counter()
    env = init_distributed("auto")
    spec = GPU if env.device.type == "cuda" else CPU
    if env.device.type == "cuda":
        set_tf32(True)
    compile_modes = [False] if args.no_compile else [False, True]
    report = {"device": torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else
              f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
              "torch": torch.__version__, "world_size": env.world_size, "checks": {}}
    checks = report["checks"]
    if env.is_main:
        checks["flash"] = check_flash(spec, env.device)
    checks["throughput"] = check_throughput(spec, env, compile_modes)
    nproc = env.world_size
    close(env)
    if not env.is_main:
        return 0  # rank 0 alone drives the trainer runs (on all the GPUs again) and the scoring
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(args.work or tmp)
        checks["resume"] = check_resume(spec, nproc, env.device, work, args.steps,
                                        compile_=not args.no_compile and env.device.type == "cuda")
        if checks["resume"].get("ok"):
            checks["hellaswag"] = check_hellaswag(checks["resume"]["checkpoint"], env.device, args.hellaswag,
                                                  spec["hellaswag_rows"], work)
        else:
            checks["hellaswag"] = {"ok": False, "error": "no checkpoint (the resume check failed)"}
    report["elapsed_s"] = round(time.perf_counter() - began, 1)
    report["passed"] = all(c.get("ok") for c in checks.values())
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(table(report), flush=True)
    print(f"wrote {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
