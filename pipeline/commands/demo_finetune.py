"""`python -m pipeline demo --finetune`: fine-tune the demo model on questions and answers.

After the demo's pretraining run, three more stages, each the command a user would type:

    qa        question/answer pairs built from the standard library itself: "What does
              json.dumps(obj, *, skipkeys=False, ...) do?" -> the first line of its docstring
    sft-data  python -m data_prep.sft       -> token shards + loss masks (answers only)
    finetune  python -m train --train.init_from=runs/demo ... on those shards

then the same held-out questions answered by the model before and after fine-tuning.
Like the demo corpus, nothing is downloaded and no text is copied into the repository:
the pairs are read with `ast` from the sources every Python installation carries.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import sys
import sysconfig
from pathlib import Path

import torch

from pipeline.atomic import atomic_write_text
from pipeline.commands.demo_corpus import SKIP_DIRS
from pipeline.commands.orchestrate import Stage, python_module, train_done, trainer_exit_code

SEED = 1337
SHARD_SIZE = 4_096  # shard 0 (val) is the first ~10% of the ~40K-token set
FINETUNE_STEPS = 60
FINETUNE_LR = "1e-3"  # a third of the demo's pretraining rate: adapt, don't overwrite
HELD_OUT = 3  # questions from the val shard shown before and after
VAL_TOKENS = 2_048  # half the val shard: data_prep.sft cuts it at SHARD_SIZE


def _signature(node: ast.FunctionDef) -> str:
    """`(a, b=1, *args, key=None)`: the def line's parameters, defaults as written."""
    text = ast.unparse(node.args)
    return f"({text if len(text) <= 60 else text[:57] + '...'})"


def qa_pairs(stdlib_dir: Path | None = None) -> list[dict]:
    """One pair per public top-level function of a public stdlib module with a docstring."""
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    pairs = []
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root)
        if SKIP_DIRS.intersection(rel.parts) or any(part.startswith("_") for part in rel.parts):
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node, clean=True)
            first = doc.strip().split("\n\n")[0].replace("\n", " ").strip() if doc else ""
            if 20 <= len(first) <= 240 and first[0].isalpha() and ">>>" not in first:
                pairs.append({"prompt": f"What does {module}.{node.name}{_signature(node)} do?\n",
                              "response": first})
    random.Random(SEED).shuffle(pairs)
    return pairs


def write_qa(path: Path) -> int:
    pairs = qa_pairs()
    if not pairs:
        raise RuntimeError("this Python installation ships no stdlib sources to build questions from")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    return len(pairs)


def finetune_stages(qa: Path, shards: Path, base_run: Path, run: Path, config: Path) -> list[Stage]:
    make_qa = Stage("qa", [python_module("pipeline.commands.demo_finetune", "--out", str(qa))],
                    done=lambda: str(qa) if qa.is_file() else None)
    data = Stage("sft-data", [python_module("data_prep.sft", "--files", str(qa), "--out", str(shards),
                                            "--shard-size", str(SHARD_SIZE))],
                 done=lambda: str(shards) if (shards / "manifest.json").is_file()
                 and json.loads((shards / "manifest.json").read_text()).get("complete") else None)
    train = Stage("finetune", [python_module(
        "train", "--config", str(config), "--run-dir", str(run), f"--train.init_from={base_run}",
        f"--data.dir={shards}", f"--train.max_steps={FINETUNE_STEPS}", f"--optim.max_lr={FINETUNE_LR}",
        "--optim.warmup_steps=5", "--train.checkpoint_every=30", "--eval.eval_every=20",
        f"--eval.val_tokens={VAL_TOKENS}", "--eval.sample_every=0")],
        done=lambda: train_done(run, FINETUNE_STEPS), exit_code=trainer_exit_code(run))
    return [make_qa, data, train]


def held_out_questions(qa: Path, shards: Path) -> list[str]:
    """The first questions of the file: they are in the val shard, never trained on."""
    manifest = json.loads((shards / "manifest.json").read_text())
    val_rows = manifest["shards"][0]["documents"]
    prompts = [json.loads(line)["prompt"] for line in qa.read_text(encoding="utf-8").splitlines()[:val_rows]]
    return prompts[:HELD_OUT]


@torch.no_grad()
def answer(model, prompt: str, max_new_tokens: int = 32) -> str:
    """Greedy answer as the fine-tuning data laid it out: [EOT] + prompt, up to the next EOT.
    The first token may not be EOT: a few-minute model's likeliest first move is often to stop,
    which would show nothing."""
    from pipeline.tokenizer import EOT, get_tokenizer
    enc = get_tokenizer()
    ids = [EOT] + enc.encode_ordinary(prompt)
    logits, _ = model.eval()(torch.tensor([ids]))
    ids.append(int(logits[0, -1, :EOT].argmax()))
    max_new_tokens = min(max_new_tokens, model.config.block_size - len(ids))
    out = model.generate(torch.tensor([ids]), max_new_tokens, temperature=0)[0, len(ids) - 1:].tolist()
    return enc.decode(out[:out.index(EOT)] if EOT in out else out).strip()


def print_before_after(qa: Path, shards: Path, base_run: Path, run: Path) -> None:
    from pipeline.checkpoint import load_model, resolve_checkpoint
    before, _ = load_model(resolve_checkpoint(base_run))
    after, _ = load_model(resolve_checkpoint(run))
    print("\nHeld-out questions, greedy answers before -> after fine-tuning:")
    for prompt in held_out_questions(qa, shards):
        print(f"  Q: {prompt.strip()}")
        print(f"     before: {answer(before, prompt)!r}")
        print(f"     after:  {answer(after, prompt)!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.commands.demo_finetune",
                                description="Write the demo's question/answer pairs (from the stdlib) as jsonl.")
    p.add_argument("--out", required=True, help="output .jsonl file")
    args = p.parse_args(argv)
    try:
        n = write_qa(Path(args.out))
    except (RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {n} question/answer pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
