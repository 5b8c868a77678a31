"""The demo corpus: English prose that every Python installation already carries.

`python -m pipeline demo` must run with no download, and this repository must not
carry anyone's text. Every CPython ships two bodies of real, human-written English:

  * pydoc_data.topics — the Language Reference sections that `help("assert")` prints;
  * the docstrings of the standard library's own source files, read with `ast` (never
    imported, so nothing executes): explanations of what modules, classes and
    functions do.

One document per reference topic and one per stdlib module (its docstrings joined in
source order). Only the prose is kept: code examples, grammar rules and doctests
(indented blocks, `>>>` lines) and reST heading underlines are dropped, and each
paragraph is reflowed onto one line. Left in, they make a fifth of the tokens runs of
spaces, which a model trained for minutes learns first and then samples forever.

The list is sorted, then shuffled with a fixed seed, so the same Python gives
byte-identical output and the held-out val shard (the first tokens, see DESIGN.md) is a
mix of both sources rather than all of one.
"""

from __future__ import annotations

import ast
import json
import random
import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import atomic_write_text
from pipeline.cli import OneLineParser

# Directories of the stdlib that hold tests, third-party packages or bytecode, not docs.
SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
# One-line docstrings ("Return self.") carry no prose and repeat everywhere.
MIN_DOCSTRING_WORDS = 8
MIN_DOCUMENT_CHARS = 200
SHUFFLE_SEED = 1337


class CorpusError(RuntimeError):
    """No demo text can be found in this Python installation."""


UNDERLINE = re.compile(r"^[*=\-~^#+]{3,}$")  # reST heading underlines: "*****", "====="
BULLETS = ("* ", "- ", "+ ")


def prose(text: str) -> str:
    """The prose paragraphs of a reST-ish text, each reflowed onto one line."""
    kept = []
    for paragraph in re.split(r"\n[ \t]*\n", text):
        lines = [line.rstrip() for line in paragraph.strip("\n").split("\n") if not UNDERLINE.match(line.strip())]
        if not lines or lines[0][:1].isspace() or lines[0].startswith(">>>"):
            continue  # an indented block: code, grammar, a doctest, a parameter table
        if not lines[0].startswith(BULLETS) and any(line[:1].isspace() for line in lines):
            continue  # "Parameters:" over indented entries (a bullet's own lines may be indented)
        flowed = re.sub(r"\s+", " ", " ".join(lines)).strip()
        if flowed and not flowed.endswith("::"):  # "Example::" introduces a code block just dropped
            kept.append(flowed)
    return "\n\n".join(kept)


@dataclass(frozen=True)
class Document:
    source: str  # "pydoc_data.topics:assert" or "stdlib:json/decoder.py"
    text: str


def reference_topics() -> list[Document]:
    """The Python Language Reference topics shipped for pydoc (empty if a distro strips them)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return []
    documents = [Document(f"pydoc_data.topics:{key}", prose(topics[key])) for key in sorted(topics)]
    return [d for d in documents if len(d.text) >= MIN_DOCUMENT_CHARS]


def _docstrings_in_source_order(tree: ast.AST) -> list[str]:
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_docstring(node, clean=True)
            if text:
                found.append(text.strip())
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def stdlib_docstrings(stdlib_dir: Path | None = None) -> list[Document]:
    """One document per stdlib module: its (deduplicated, non-trivial) docstrings."""
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    documents = []
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root)
        if SKIP_DIRS.intersection(rel.parts):
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue  # e.g. lib2to3 fixtures written in Python 2 on purpose
        kept = []
        for text in map(prose, _docstrings_in_source_order(tree)):
            if len(text.split()) >= MIN_DOCSTRING_WORDS and text not in seen:
                seen.add(text)
                kept.append(text)
        body = "\n\n".join(kept)
        if len(body) >= MIN_DOCUMENT_CHARS:
            documents.append(Document(f"stdlib:{rel.as_posix()}", body))
    return documents


def demo_documents(stdlib_dir: Path | None = None, seed: int = SHUFFLE_SEED) -> list[Document]:
    documents = reference_topics() + stdlib_docstrings(stdlib_dir)
    random.Random(seed).shuffle(documents)
    return documents


@dataclass(frozen=True)
class CorpusStats:
    path: Path
    documents: int
    characters: int
    sources: dict[str, int]  # documents per source kind


def write_corpus(path: str | Path, documents: list[Document]) -> CorpusStats:
    """Write documents as jsonl ({"text", "source"} per line) in one atomic step.

    The file therefore exists only when complete, which is what lets a second demo run
    skip this step.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"text": d.text, "source": d.source}, ensure_ascii=False) for d in documents]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return corpus_stats(path)


def corpus_stats(path: str | Path) -> CorpusStats:
    path = Path(path)
    documents = characters = 0
    sources: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            documents += 1
            characters += len(row["text"])
            kind = row["source"].split(":", 1)[0]
            sources[kind] = sources.get(kind, 0) + 1
    return CorpusStats(path, documents, characters, sources)


def ensure_corpus(path: str | Path) -> tuple[CorpusStats, bool]:
    """Build the corpus file unless it is already there; returns (stats, built_now)."""
    path = Path(path)
    if path.is_file():
        return corpus_stats(path), False
    documents = demo_documents()
    if not documents:
        raise CorpusError("this Python installation ships neither pydoc_data nor stdlib sources; "
                           "run the pipeline on your own text: python -m data_prep.fineweb --files ...")
    return write_corpus(path, documents), True


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m pipeline.commands.demo_corpus",
                                description="Write the demo corpus (Python's own documentation) as jsonl.")
    p.add_argument("--out", required=True, help="output .jsonl file (kept if it already exists)")
    args = p.parse_args(argv)
    try:
        stats, built = ensure_corpus(args.out)
    except (CorpusError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    kinds = ", ".join(f"{n} from {kind}" for kind, n in sorted(stats.sources.items()))
    verb = "wrote" if built else "kept existing"
    print(f"{verb} {stats.path}: {stats.documents} documents ({kinds}), {stats.characters:,} characters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
