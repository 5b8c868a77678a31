"""CORE (the DCLM paper's in-context metric, arXiv 2406.11794) from a local eval bundle.

The bundle has the published layout: `core.yaml` (under `icl_tasks`, per task: label,
dataset_uri, num_fewshot, icl_task_type, continuation_delimiter), `eval_meta_data.csv`
(columns "Eval Task" and "Random baseline", the latter in percent) and `eval_data/**.jsonl`.

The rules follow karpathy/nanochat's core_eval.py / base_eval.py, so numbers compare with
its leaderboard:
- a task's rows are shuffled with random.Random(1337) and the first --max-per-task kept;
  the few-shot pool is the kept rows;
- item i's few-shot examples are random.Random(1234 + i).sample(every other kept row, k);
- prompts: each few-shot example as "<query><delim><gold answer>\\n\\n", then the item
  (language modeling: contexts trimmed; the prompt without the continuation stripped);
- every sequence starts with the beginning-of-text token (GPT-2: <|endoftext|>);
- multiple_choice: the continuation of each choice is what follows the choices' common
  token prefix; schema: the contexts' common token suffix is the continuation; the lowest
  mean continuation loss wins; language_modeling: correct only if greedy argmax reproduces
  every continuation token;
- a sequence longer than the model's context is cut from the left on its own;
- centered accuracy (acc - b) / (1 - b) with b the random baseline; CORE = their mean.
Where this differs (a choice with no continuation token is never picked, nanochat's mean
of nothing is nan; a language-modeling prompt whose tokens are not a prefix of the full
prompt's is scored from their common prefix instead of stopping) is in docs/eval.md.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from eval import EvalError
from pipeline.scoring import Request, mean_loss_choice, score_requests
from pipeline.tokenizer import EOT, get_tokenizer

TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
SHUFFLE_SEED = 1337  # nanochat base_eval.py: one fixed shuffle, then the first N rows
FEWSHOT_SEED = 1234  # nanochat core_eval.py: item i draws with Random(1234 + i)
FIELDS = {"multiple_choice": ("query", "choices", "gold"), "schema": ("context_options", "continuation", "gold"),
          "language_modeling": ("context", "continuation")}


@dataclass(frozen=True)
class CoreTask:
    label: str
    kind: str  # one of TASK_TYPES
    num_fewshot: int
    delimiter: str
    baseline: float  # random baseline as a fraction
    rows: list[dict]  # shuffled, cut to max_per_task


@dataclass(frozen=True)
class CoreBundle:
    directory: Path
    tasks: list[CoreTask]
    sha256: str  # of core.yaml, the baselines and every task's kept rows, and max_per_task

    @property
    def metrics(self) -> tuple[str, ...]:
        per_task = [f"core_{what}/{t.label}" for t in self.tasks for what in ("acc", "centered")]
        return ("core", *per_task)


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise EvalError(f"{path}: not found (an eval bundle holds core.yaml, eval_meta_data.csv and "
                        "eval_data/; see docs/eval.md for where to get it)")
    return path.read_bytes()


def load_bundle(directory: str | Path, max_per_task: int = 0) -> CoreBundle:
    """Read and check the bundle; each task's rows shuffled and cut as the published code does."""
    directory = Path(directory)
    if not directory.is_dir():
        raise EvalError(f"--eval-bundle {directory}: not a directory (see docs/eval.md for the bundle)")
    digest = hashlib.sha256(f"max_per_task={max_per_task}|".encode())
    config_bytes = _read(directory / "core.yaml")
    meta_bytes = _read(directory / "eval_meta_data.csv")
    digest.update(config_bytes)
    try:
        config = yaml.safe_load(config_bytes)
        entries = config["icl_tasks"]
        assert isinstance(entries, list)
    except Exception:
        raise EvalError(f"{directory / 'core.yaml'}: expected YAML with an 'icl_tasks' list") from None
    baselines = {}
    for row in csv.DictReader(meta_bytes.decode("utf-8").splitlines()):
        try:
            baselines[row["Eval Task"]] = float(row["Random baseline"]) / 100
        except (KeyError, TypeError, ValueError):
            raise EvalError(f"{directory / 'eval_meta_data.csv'}: needs columns 'Eval Task' and "
                            f"'Random baseline' (a number), got {row}") from None
    tasks = []
    for entry in entries:
        where = f"{directory / 'core.yaml'}: task {entry.get('label', '?') if isinstance(entry, dict) else entry!r}"
        try:
            label, uri, kind = entry["label"], entry["dataset_uri"], entry["icl_task_type"]
            shots = entry["num_fewshot"]
            shots = int(shots[0] if isinstance(shots, list) else shots)
        except (KeyError, TypeError, ValueError, IndexError):
            raise EvalError(f"{where}: needs label, dataset_uri, icl_task_type and num_fewshot") from None
        if kind not in TASK_TYPES:
            raise EvalError(f"{where}: icl_task_type {kind!r} is not one of {', '.join(TASK_TYPES)}")
        if label not in baselines:
            raise EvalError(f"{directory / 'eval_meta_data.csv'}: no random baseline for task {label!r}")
        path = directory / "eval_data" / uri
        data = _read(path)
        rows = [_check_row(_parse(line, f"{path}:{n}"), kind, f"{path}:{n}")
                for n, line in enumerate(data.decode("utf-8").splitlines(), start=1) if line.strip()]
        random.Random(SHUFFLE_SEED).shuffle(rows)
        if max_per_task > 0:
            rows = rows[:max_per_task]
        if len(rows) <= shots:
            raise EvalError(f"{where}: {len(rows)} rows cannot supply {shots} few-shot examples plus the item")
        digest.update(f"|{label}|{kind}|{shots}|{entry.get('continuation_delimiter', ' ')}|"
                      f"{baselines[label]}|".encode())
        digest.update(json.dumps(rows, sort_keys=True).encode())
        tasks.append(CoreTask(label, kind, shots, entry.get("continuation_delimiter", " "), baselines[label], rows))
    if not tasks:
        raise EvalError(f"{directory / 'core.yaml'}: no tasks to evaluate")
    return CoreBundle(directory, tasks, digest.hexdigest())


def _parse(line: str, where: str) -> object:
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise EvalError(f"{where}: not valid JSON ({err})") from None


def _check_row(row: object, kind: str, where: str) -> dict:
    if not isinstance(row, dict) or any(k not in row for k in FIELDS[kind]):
        raise EvalError(f"{where}: a {kind} row needs the fields {', '.join(FIELDS[kind])}")
    options = row.get("choices", row.get("context_options"))
    if kind != "language_modeling":
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
            raise EvalError(f"{where}: expected a list of at least 2 strings as options, got {options!r}")
        if isinstance(row["gold"], bool) or not isinstance(row["gold"], int) or not 0 <= row["gold"] < len(options):
            raise EvalError(f"{where}: 'gold' must be an index into the {len(options)} options, got {row['gold']!r}")
    return row


# ----------------------------------------------------------------------------- prompts

def fewshot_indices(n_rows: int, index: int, k: int) -> list[int]:
    """The few-shot draw for item `index`: deterministic, never the item itself."""
    if k == 0:
        return []
    return random.Random(FEWSHOT_SEED + index).sample([i for i in range(n_rows) if i != index], k)


def render(task: CoreTask, index: int) -> list[str]:
    """The prompts of item `index` (several for multiple_choice/schema; without and with
    the continuation for language_modeling)."""
    item, d = task.rows[index], task.delimiter
    shots = [task.rows[i] for i in fewshot_indices(len(task.rows), index, task.num_fewshot)]
    if task.kind == "multiple_choice":
        head = "".join(f"{s['query']}{d}{s['choices'][s['gold']]}\n\n" for s in shots)
        return [f"{head}{item['query']}{d}{choice}" for choice in item["choices"]]
    if task.kind == "schema":
        head = "".join(f"{s['context_options'][s['gold']]}{d}{s['continuation']}\n\n" for s in shots)
        return [f"{head}{option}{d}{item['continuation']}" for option in item["context_options"]]
    head = "".join(f"{s['context'].strip()}{d}{s['continuation']}\n\n" for s in shots)
    without = f"{head}{item['context'].strip()}{d}"
    return [without.strip(), without + item["continuation"]]


def _common(seqs: list[list[int]], reverse: bool = False) -> int:
    n, shortest = 0, min(len(s) for s in seqs)
    while n < shortest and len({s[-1 - n] if reverse else s[n] for s in seqs}) == 1:
        n += 1
    return n


def request(task: CoreTask, index: int) -> Request:
    """Item `index` as sequences for the continuation scorer, BOS first."""
    enc = get_tokenizer()
    seqs = [[EOT] + enc.encode_ordinary(p) for p in render(task, index)]
    if task.kind == "multiple_choice":
        start = _common(seqs)
        return Request(tuple(map(tuple, seqs)), (start,) * len(seqs))
    if task.kind == "schema":
        suffix = _common(seqs, reverse=True)
        return Request(tuple(map(tuple, seqs)), tuple(len(s) - suffix for s in seqs))
    without, full = seqs
    return Request((tuple(full),), (_common([without, full]),))


# ----------------------------------------------------------------------------- scoring

def correct(task: CoreTask, index: int, scores: torch.Tensor) -> bool:
    """scores: (len(seqs), 3) [summed loss, tokens, greedy-exact] from the scorer."""
    if task.kind == "language_modeling":
        return bool(scores[0, 2] == 1.0)
    return mean_loss_choice(scores) == task.rows[index]["gold"]


def evaluate_task(model: torch.nn.Module, task: CoreTask, device: torch.device | str,
                  autocast_dtype: torch.dtype | None = None, batch_size: int = 32, rank: int = 0,
                  world_size: int = 1, progress=None) -> float:
    """Accuracy on the task's kept rows (every rank must call this; all get the result)."""
    scores = score_requests(model, [request(task, i) for i in range(len(task.rows))], device, autocast_dtype,
                            batch_size, rank, world_size, progress)
    return sum(correct(task, i, s) for i, s in enumerate(scores)) / len(task.rows)


def evaluate_core(model: torch.nn.Module, bundle: CoreBundle, device: torch.device | str,
                  autocast_dtype: torch.dtype | None = None, batch_size: int = 32, rank: int = 0,
                  world_size: int = 1, progress=None, log=None) -> dict:
    """{"core", "tasks": {label: {"acc", "centered", "n", "shots", "type"}}}."""
    results = {}
    for task in bundle.tasks:
        acc = evaluate_task(model, task, device, autocast_dtype, batch_size, rank, world_size, progress)
        centered = (acc - task.baseline) / (1 - task.baseline)
        results[task.label] = dict(acc=acc, centered=centered, n=len(task.rows), shots=task.num_fewshot,
                                   type=task.kind)
        if log is not None:
            log(f"CORE {task.label} ({task.num_fewshot}-shot {task.kind}): acc {acc:.4f} centered {centered:.4f}")
    core = sum(r["centered"] for r in results.values()) / len(results)
    return {"core": core, "tasks": results}
