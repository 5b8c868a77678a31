"""Generated CORE eval bundles (the published layout) and a GPT built to know their answers.

Every text is made of three word classes: GOOD words (every gold continuation, the end of
every gold schema context, the language-modeling chains), BAD words (wrong choices, the
end of wrong contexts) and NEUTRAL words (queries, contexts; some non-ASCII). The oracle
model is a bigram table: after a GOOD or NEUTRAL token, GOOD and NEUTRAL tokens are likely;
after a BAD token nothing is; GOOD_CHAIN[i] is followed by GOOD_CHAIN[i + 1] most of all.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from pipeline.config import ModelConfig
from pipeline.model import GPT
from pipeline.tokenizer import EOT, get_tokenizer

GOOD = [" apple", " river", " stone", " cloud", " green", " light", " music", " table", " water", " paper"]
BAD = [" zinc", " vortex", " quartz", " jazz", " oxide", " pixel", " iron", " yak"]  # one token each
NEUTRAL = [" the", " a", " of", " Ünïcødé", " café", " naïve", " 日本", " and", " to", " is", " it", " was"]
GOOD_CHAIN = GOOD  # LM items: a context ending in GOOD[j] continues with GOOD[j + 1], GOOD[j + 2]

# label, type, shots, delimiter, rows, choices, baseline %
TASKS = [("mc_zero", "multiple_choice", 0, " ", 12, 4, 25.0),
         ("mc_five", "multiple_choice", 5, ": ", 12, 3, 100 / 3),
         ("schema_two", "schema", 2, "\n", 10, 2, 50.0),
         ("lm_three", "language_modeling", 3, " ", 9, 0, 0.0),
         ("lm_one", "language_modeling", 1, " ", 6, 0, 0.0)]


def _words(rng: random.Random, pool: list[str], n: int) -> str:
    return "".join(rng.choice(pool) for _ in range(n)).lstrip()


def _rows(kind: str, n: int, choices: int, rng: random.Random) -> list[dict]:
    rows = []
    for i in range(n):
        gold = i % max(choices, 1)  # balanced: a model that always picks 0 scores the baseline exactly
        if kind == "multiple_choice":
            # The same number of (one-token) words in every choice: equal lengths make a
            # uniform model's mean losses tie exactly.
            k = rng.randint(1, 3)
            opts = [_words(rng, BAD, k) for _ in range(choices)]
            opts[gold] = _words(rng, GOOD, k)
            rows.append({"query": "Q" + "".join(rng.choice(NEUTRAL) for _ in range(rng.randint(2, 6))),
                         "choices": opts, "gold": gold})
        elif kind == "schema":
            head = _words(rng, NEUTRAL, rng.randint(2, 5))
            opts = [head + rng.choice(BAD) for _ in range(choices)]
            opts[gold] = head + rng.choice(GOOD)
            rows.append({"context_options": opts, "continuation": _words(rng, NEUTRAL + GOOD, 3), "gold": gold})
        else:
            j = rng.randrange(len(GOOD_CHAIN) - 2)
            context = _words(rng, NEUTRAL, rng.randint(2, 5)) + GOOD_CHAIN[j] + "  "  # trailing space: trimmed
            rows.append({"context": context, "continuation": (GOOD_CHAIN[j + 1] + GOOD_CHAIN[j + 2]).lstrip()})
    return rows


def write_bundle(directory: Path, tasks: list[tuple[str, str, int, str, list[dict], float]]) -> Path:
    """The published layout from (label, type, shots, delimiter, rows, baseline %) tuples."""
    (directory / "eval_data" / "sub").mkdir(parents=True, exist_ok=True)
    lines, meta = ["icl_tasks:"], ["Eval Task,Task Category,Random baseline"]
    for label, kind, shots, delim, rows, baseline in tasks:
        uri = f"sub/{label}.jsonl"
        with open(directory / "eval_data" / uri, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        lines += [f"- label: {label}", f"  dataset_uri: {uri}", f"  num_fewshot: [{shots}]",
                  f"  icl_task_type: {kind}", f"  continuation_delimiter: {json.dumps(delim)}"]
        meta.append(f"{label},test,{baseline}")
    (directory / "core.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (directory / "eval_meta_data.csv").write_text("\n".join(meta) + "\n", encoding="utf-8")
    return directory


def make_bundle(directory: Path, tasks=TASKS, seed: int = 0) -> Path:
    rng = random.Random(seed)
    return write_bundle(directory, [(label, kind, shots, delim, _rows(kind, n, choices, rng), baseline)
                                    for label, kind, shots, delim, n, choices, baseline in tasks])


def hellaswag_as_mc(path: Path, limit: int) -> list[dict]:
    """HellaSwag rows in CORE's multiple-choice format (query = the context, choices = the
    endings, delimiter " "): the prompt text build-nanogpt scores, plus BOS and few-shots."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(rows) == limit:
                break
            row = json.loads(line)
            rows.append({"query": row["ctx"], "choices": row["endings"], "gold": row["label"]})
    return rows


def _tokens(words: list[str]) -> set[int]:
    enc = get_tokenizer()
    return {t for w in words for t in enc.encode_ordinary(w)}


def oracle_model(requests, block_size: int = 512) -> GPT:
    """A GPT whose next-token logits are the bigram table above (blocks switched off,
    one-hot embeddings, an untied output layer solved exactly for the tokens in play)."""
    enc = get_tokenizer()
    good, bad = _tokens(GOOD), _tokens(BAD)
    assert not good & bad, "word classes must not share tokens"
    in_play = sorted({t for r in requests for s in r.seqs for t in s} | good | bad | {EOT})
    d = 256
    assert len(in_play) < d, f"{len(in_play)} tokens in play need a wider model"
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=d, block_size=block_size)).eval()
    with torch.no_grad():
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        model.transformer.wpe.weight.zero_()
        wte = torch.zeros_like(model.transformer.wte.weight)
        for i, t in enumerate(in_play):
            wte[t, i] = 1.0
        model.transformer.wte.weight = torch.nn.Parameter(wte)
        index = {t: i for i, t in enumerate(in_play)}
        table = torch.zeros(len(in_play), len(in_play))
        for a in in_play:
            if a in bad:
                continue
            for v in in_play:
                if v not in bad:
                    table[index[a], index[v]] = 20.0
        chain = [enc.encode_ordinary(w) for w in GOOD_CHAIN]
        assert all(len(c) == 1 for c in chain)
        for x, y in zip(chain, chain[1:]):
            table[index[x[0]], index[y[0]]] += 10.0
        hidden = model.hidden_states(torch.tensor([in_play]))[0].double()  # one-hot -> ln_f, position-free
        # The minimum-norm head with hidden @ head = table (hidden has full row rank: n < d).
        head = (hidden.t() @ torch.linalg.solve(hidden @ hidden.t(), table.double())).float()
        weight = torch.zeros(model.config.padded_vocab_size, d)
        weight[in_play] = head.t()
        model.lm_head.weight = torch.nn.Parameter(weight)
        got = model.lm_head(model.hidden_states(torch.tensor([in_play]))[0])[:, in_play]
        assert torch.allclose(got, table, atol=1e-3), "the oracle's bigram table is not reproduced"
    return model


def uniform_model(block_size: int = 512) -> GPT:
    """Every real token equally likely at every position."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=block_size)).eval()
    model.lm_head.weight = torch.nn.Parameter(torch.zeros_like(model.lm_head.weight))
    return model
