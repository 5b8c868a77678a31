"""Every ```bash block of README.md and docs/*.md that can run on this machine, run as written.

The documents cannot rot: a renamed flag or module fails here. Blocks run in order (README
first, then docs/ by name), each as one `bash -eo pipefail` script, in a scratch copy of the
checkout (so `runs/`, `data/` of the real checkout are untouched and later blocks see what
earlier blocks made). Each detail lives once: no prose paragraph of the README is repeated
in docs/ (the README is the front page, docs/ hold the details).

Marking (HTML comments are invisible on GitHub):
  <!-- readme-test: skip (needs 8 GPUs) -->   on the line(s) just before a fence: skip the block
  some command  # readme-test: skip            skip one line of a block
Never run whatever the marks say: installing packages (it would change the environment the
tests run in) and running the test suite itself (`make test`, pytest: recursion).
The demo is run shortened (DEMO_ARGS below appended) so the blocks after it (status,
generate on runs/demo) have a real run to work on; tests/test_pipeline_demo.py covers
the demo's own output.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, subprocess_env

README = REPO / "README.md"
DOCUMENTS = [README] + sorted((REPO / "docs").glob("*.md"))
MARK = re.compile(r"<!--\s*readme-test:\s*(?P<what>.*?)\s*-->")
LINE_SKIP = re.compile(r"#\s*readme-test:\s*skip\b")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
# Never run, whatever the README says, with the reason shown in the skip message.
NEVER_RUN = [
    (re.compile(r"\bpip3?\s+install\b|-m\s+pip\s+install\b|-m\s+venv\b|\bapt(-get)?\s+install\b|\bconda\s+install\b"),
     "installs packages (would change the environment the tests run in)"),
    (re.compile(r"\bmake\s+test\b|\bpytest\b|\.ci/run\b"), "runs the test suite this test belongs to"),
]
DEMO_ARGS = ("--offline --train.max_steps=6 --train.checkpoint_every=3 --train.log_every=1 --eval.eval_every=3 "
             "--eval.val_tokens=1024 --eval.sample_every=3 --hellaswag-limit=8")
BLOCK_TIMEOUT = 600


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None  # reason, or None to run


def parse_blocks(text: str) -> list[Block]:
    """The ```bash / ```sh / ```shell / ```console blocks of a markdown text, with skip marks."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m["fence"], m["lang"].lower(), i
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        if lang in ("bash", "sh", "shell", "console"):
            body = [line[len(m["indent"]):] if line.startswith(m["indent"]) else line for line in lines[i + 1:j]]
            if lang == "console":  # keep only "$ command" lines
                body = [line[2:] for line in body if line.startswith("$ ")]
            blocks.append(Block(start + 1, "\n".join(body), _mark_before(lines, start)))
        i = j + 1
    return blocks


def _mark_before(lines: list[str], fence: int) -> str | None:
    """A readme-test mark in the comment lines (blank lines allowed) just above a fence."""
    k = fence - 1
    while k >= 0 and (not lines[k].strip() or MARK.search(lines[k])):
        m = MARK.search(lines[k])
        if m and m["what"].startswith("skip"):
            return m["what"][4:].strip(" :()") or "marked skip"
        k -= 1
    return None


def runnable_script(code: str) -> tuple[str, list[str]]:
    """The block's lines to run (with the demo shortened) and the reasons lines were left out."""
    kept, left_out = [], []
    logical = re.sub(r"\\\n\s*", " ", code)  # one line per command
    for line in logical.splitlines():
        bare = line.strip()
        if not bare or bare.startswith("#"):
            continue
        if LINE_SKIP.search(line):
            left_out.append(f"{bare} (marked skip)")
            continue
        reason = next((why for pattern, why in NEVER_RUN if pattern.search(bare)), None)
        if reason:
            left_out.append(f"{bare} ({reason})")
            continue
        kept.append(shorten_demo(line))
    return "\n".join(kept), left_out


def shorten_demo(line: str) -> str:
    command = line.split("#", 1)[0].rstrip()
    if re.search(r"\bmake\s+demo\b", command) and "DEMO_ARGS" not in command:
        return command + f" DEMO_ARGS='{DEMO_ARGS}'"
    if re.search(r"-m\s+pipeline\s+demo\b", command):
        return command + " " + DEMO_ARGS
    return line


def scratch_checkout(dest: Path) -> Path:
    """Copy the checkout's tracked and unignored files (what a fresh clone holds) to dest."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, capture_output=True)
    if listing.returncode == 0:
        for rel in filter(None, listing.stdout.decode().split("\0")):
            src = REPO / rel
            if src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
    else:  # not a git checkout (e.g. an sdist): copy all but build outputs and data
        shutil.copytree(REPO, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "data", "runs", "__pycache__", "*.egg-info", ".pytest_cache"))
    return dest


def tool_shims(root: Path) -> Path:
    """`python`/`torchrun` on PATH and a ready `.venv` that all mean this interpreter.

    README commands say `python`; make targets use .venv/bin/python. Both must run the
    interpreter the tests run in (a shell script, not a symlink, so its venv is kept).
    """
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    scripts = {"python": f'exec "{sys.executable}" "$@"', "python3": f'exec "{sys.executable}" "$@"',
               "torchrun": f'exec "{sys.executable}" -m torch.distributed.run "$@"'}
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    (root / ".venv" / ".installed").touch()  # newer than pyproject.toml: `make` skips setup
    return bin_dir


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = scratch_checkout(tmp_path_factory.mktemp("readme") / "checkout")
    bin_dir = tool_shims(root)
    env = subprocess_env(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    env["PYTHONPATH"] = str(root)
    return root, env


BLOCKS = [(doc.relative_to(REPO).as_posix(), block) for doc in DOCUMENTS if doc.is_file()
          for block in parse_blocks(doc.read_text())]


@pytest.mark.parametrize("where,block", BLOCKS, ids=[f"{doc}:{b.line}" for doc, b in BLOCKS])
def test_documented_block(where: str, block: Block, scratch) -> None:
    if block.skip:
        pytest.skip(f"{where}:{block.line}: {block.skip}")
    script, left_out = runnable_script(block.code)
    if not script:
        pytest.skip(f"{where}:{block.line}: nothing runnable here: {'; '.join(left_out)}")
    root, env = scratch
    proc = subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=root, env=env, capture_output=True,
                          text=True, timeout=BLOCK_TIMEOUT)
    assert proc.returncode == 0, (f"{where}:{block.line} block failed (exit {proc.returncode}):\n{script}\n"
                                  f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}")


def test_readme_has_runnable_blocks() -> None:
    assert README.is_file(), "README.md is missing"
    runnable = [b for doc, b in BLOCKS if doc == "README.md" and not b.skip and runnable_script(b.code)[0]]
    assert runnable, "README.md has no ```bash block this test can run: its commands are untested"


def prose_paragraphs(text: str) -> list[str]:
    """The text's paragraphs and table rows outside code fences, whitespace-normalised."""
    out, para, fenced = [], [], False
    for line in text.splitlines() + [""]:
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        if not line.strip() or line.lstrip().startswith(("#", "|", "<!--")):
            if para:
                out.append(" ".join(para))
            para = []
            if line.lstrip().startswith("|"):
                out.append(" ".join(line.split()))
            continue
        para.append(" ".join(line.split()))
    return [p for p in out if len(p) >= 60]


def test_readme_is_a_front_page_and_each_detail_lives_once() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 250, "README.md is the front page (<= 250 lines); details go to docs/"
    docs = {doc.name: " ".join(doc.read_text().split()) for doc in DOCUMENTS[1:]}
    repeated = [(p[:70], name) for p in prose_paragraphs(text) for name, body in docs.items() if p in body]
    assert repeated == [], f"paragraphs of README.md repeated in docs/: {repeated}"


def test_prose_paragraphs_sees_paragraphs_and_table_rows_not_code() -> None:
    sample = ("# T\n\nA paragraph that is long enough to count, spread over\ntwo lines of the file.\n\n"
              "```bash\necho a code line that is long enough to count if it were prose, but it is not\n```\n"
              "| a | table row that is long enough to count as a detail of its own |\n")
    assert prose_paragraphs(sample) == [
        "A paragraph that is long enough to count, spread over two lines of the file.",
        "| a | table row that is long enough to count as a detail of its own |"]


# -- the parser itself, on a README written here --

SAMPLE = """\
# Title

```bash
make demo
python -m pipeline status runs/demo  # what the demo left
```

<!-- readme-test: skip (needs 8 GPUs) -->
```bash
torchrun --nproc_per_node=8 -m train --config configs/gpt2-124m.toml
```

```python
print("not shell")
```

- a list item with an indented block:

  ```sh
  python -m pipeline generate --checkpoint runs/demo \\
      --prompt "Hi"
  pip install -e .
  sbatch slurm/train.sbatch  # readme-test: skip
  ```
"""


def test_parse_blocks_finds_shell_blocks_and_marks() -> None:
    blocks = parse_blocks(SAMPLE)
    assert [b.line for b in blocks] == [3, 9, 19]
    assert blocks[0].skip is None and blocks[0].code.splitlines()[0] == "make demo"
    assert blocks[1].skip == "needs 8 GPUs"
    assert blocks[2].skip is None


def test_runnable_script_shortens_demo_and_leaves_out_marked_lines() -> None:
    first, third = parse_blocks(SAMPLE)[0], parse_blocks(SAMPLE)[2]
    script, left_out = runnable_script(first.code)
    assert script.splitlines()[0] == f"make demo DEMO_ARGS='{DEMO_ARGS}'"
    assert script.splitlines()[1].startswith("python -m pipeline status runs/demo")
    assert not left_out
    script, left_out = runnable_script(third.code)
    assert " ".join(script.split()) == 'python -m pipeline generate --checkpoint runs/demo --prompt "Hi"'
    assert any("pip install" in x for x in left_out) and any("sbatch" in x for x in left_out)
