"""The demo corpus: real prose from the Python installation, deterministic, nothing copied in."""

from __future__ import annotations

import json
import textwrap

import pytest

from pipeline.commands.demo_corpus import (Document, demo_documents, ensure_corpus, main as corpus_main, prose,
                                  reference_topics, stdlib_docstrings, write_corpus)


def _write(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


LONG = "This sentence has quite a few words in it, enough to be kept as prose."


def test_prose_drops_code_and_underlines_and_reflows_paragraphs():
    text = textwrap.dedent("""\
        Assignment statements
        *********************

        Assignment statements are used to (re)bind names
        to values:

           assignment_stmt ::= (target_list "=")+ expression

        Example::

            x = 1

        >>> print(1)
        1

        * A list item
          that continues.

        Parameters:
            x -- the value

        Last  paragraph.
        """)
    assert prose(text) == ("Assignment statements\n\n"
                           "Assignment statements are used to (re)bind names to values:\n\n"
                           "* A list item that continues.\n\n"
                           "Last paragraph.")


def test_stdlib_docstrings_keeps_prose_in_source_order_and_skips_tests(tmp_path):
    _write(tmp_path, "alpha.py", f'''
        """{LONG} Module alpha."""
        def f():
            """{LONG} Function f."""
        class C:
            """Short."""
            def m(self):
                """{LONG} Method m."""
        ''')
    _write(tmp_path, "beta/__init__.py", f'"""{LONG} Module alpha."""\n' + f'def g():\n    """{LONG} {"x " * 80}"""\n')
    _write(tmp_path, "test/test_alpha.py", f'"""{LONG} A test module."""\n' + f'"""{"y " * 200}"""\n')
    _write(tmp_path, "broken.py", f'print "python 2"\n"""{LONG}"""\n')
    docs = stdlib_docstrings(tmp_path)
    assert [d.source for d in docs] == ["stdlib:alpha.py", "stdlib:beta/__init__.py"]
    alpha = docs[0].text.split("\n\n")
    assert [p.rsplit(" ", 2)[-2:] for p in alpha] == [["Module", "alpha."], ["Function", "f."], ["Method", "m."]]
    assert "Short." not in docs[0].text  # too few words
    assert "Module alpha" not in docs[1].text  # the same docstring twice is kept once


def test_document_order_is_deterministic(tmp_path):
    for i in range(30):
        _write(tmp_path, f"mod{i:02d}/__init__.py", f'"""{LONG} Module number {i}. {"z " * 60}"""\n')
    first = demo_documents(tmp_path)
    assert first == demo_documents(tmp_path)
    stdlib = [d for d in first if d.source.startswith("stdlib:")]
    assert len(stdlib) == 30 and stdlib != sorted(stdlib, key=lambda d: d.source)  # shuffled, by a fixed seed


@pytest.fixture(scope="module")
def real_corpus(tmp_path_factory):
    """The corpus of this Python installation, extracted once (it takes seconds) via the CLI."""
    out = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    assert corpus_main(["--out", str(out)]) == 0
    return out


def test_real_installation_gives_megabytes_of_prose(real_corpus):
    rows = [json.loads(line) for line in real_corpus.read_text().splitlines()]
    assert all(set(r) == {"text", "source"} for r in rows)
    assert sum(len(r["text"]) for r in rows) > 1_000_000
    topics = {r["source"]: r["text"] for r in rows if r["source"].startswith("pydoc_data.topics:")}
    assert len(topics) > 50 and 'The "assert" statement' in topics["pydoc_data.topics:assert"]
    assert any(r["source"] == "stdlib:json/__init__.py" for r in rows)
    assert {r["source"].split(":")[0] for r in rows[:40]} == {"pydoc_data.topics", "stdlib"}  # val sees both
    assert len(reference_topics()) == len(topics)


def test_cli_keeps_an_existing_corpus(real_corpus, capsys):
    mtime = real_corpus.stat().st_mtime_ns
    stats, built = ensure_corpus(real_corpus)
    assert not built and stats.documents > 300 and stats.sources["pydoc_data.topics"] > 50
    assert corpus_main(["--out", str(real_corpus)]) == 0
    assert capsys.readouterr().out.startswith(f"kept existing {real_corpus}: ")
    assert real_corpus.stat().st_mtime_ns == mtime


def test_write_corpus_round_trips(tmp_path):
    docs = [Document("stdlib:a.py", "first text"), Document("pydoc_data.topics:x", "second\ntext é")]
    stats = write_corpus(tmp_path / "c.jsonl", docs)
    assert (stats.documents, stats.characters) == (2, len("first text") + len("second\ntext é"))
    assert stats.sources == {"stdlib": 1, "pydoc_data.topics": 1}
