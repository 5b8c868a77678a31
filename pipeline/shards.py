"""The shard format shared by data_prep (writer) and train/eval (readers).

Shards are build-nanogpt compatible: `{prefix}_{split}_{index:06d}.npy`, np.save of a
1-D uint16 array; shard 0 is val. `manifest.json` beside them records the tokenizer,
the source and, per complete shard, its token count, document count and sha256.
Directories of build-nanogpt shards without a manifest are accepted too (fingerprinted
by file names and sizes).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_write_json, sha256_file
from pipeline.tokenizer import tokenizer_fingerprint

MANIFEST = "manifest.json"
FORMAT = "gpt2-pipeline-shards"
FORMAT_VERSION = 1
DTYPE = np.dtype("<u2")
MASK_DTYPE = np.dtype("u1")  # loss masks (data_prep.sft): 1 = this token is a training target
SHARD_RE = re.compile(r"^(?P<prefix>.+)_(?P<split>train|val)_(?P<index>\d{6})\.npy$")


class ShardError(RuntimeError):
    """A shard directory, manifest or shard file that cannot be used (names the file)."""


def shard_filename(prefix: str, split: str, index: int) -> str:
    return f"{prefix}_{split}_{index:06d}.npy"


def mask_filename(shard_name: str) -> str:
    """The loss-mask file beside a token shard: fineweb_train_000001.npy -> ..._000001.mask.npy
    (not matched by SHARD_RE, so readers of plain token shards never mistake it for one)."""
    return shard_name.removesuffix(".npy") + ".mask.npy"


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    split: str
    tokens: int
    documents: int | None = None
    sha256: str | None = None
    mask_sha256: str | None = None  # set when the shard has a loss mask (prompt/response data)

    @property
    def mask_path(self) -> Path | None:
        return self.path.with_name(mask_filename(self.path.name)) if self.mask_sha256 else None


@dataclass(frozen=True)
class ShardSet:
    directory: Path
    shards: tuple[ShardInfo, ...]
    fingerprint: str  # changes whenever any shard's content changes

    def split(self, name: str) -> list[ShardInfo]:
        return [s for s in self.shards if s.split == name]


def read_manifest(directory: str | Path) -> dict | None:
    path = Path(directory) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ShardError(f"{path}: corrupt manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ShardError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise ShardError(f"{path}: manifest version {manifest.get('version')!r}, this code reads {FORMAT_VERSION}")
    return manifest


def write_manifest(directory: str | Path, manifest: dict) -> None:
    atomic_write_json(Path(directory) / MANIFEST, manifest)


def check_tokenizer(manifest: dict, where: Path) -> None:
    ours = tokenizer_fingerprint()
    theirs = manifest.get("tokenizer")
    if theirs != ours:
        raise ShardError(f"{where}: shards were written with tokenizer {theirs!r}, "
                         f"this pipeline uses {ours['name']} (BPE sha256 {ours['bpe_sha256']})")


def load_shard_set(directory: str | Path, require_complete: bool = True) -> ShardSet:
    """Describe the shards in directory (manifest if present, else build-nanogpt file names)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ShardError(f"{directory}: shard directory does not exist (run python -m data_prep.fineweb --out {directory})")
    manifest = read_manifest(directory)
    if manifest is None:
        return _shard_set_without_manifest(directory)
    check_tokenizer(manifest, directory / MANIFEST)
    if require_complete and not manifest.get("complete", False):
        raise ShardError(f"{directory / MANIFEST}: data_prep has not finished writing this directory "
                         "(re-run the same data_prep command to complete it)")
    try:
        shards = tuple(ShardInfo(directory / s["file"], s["split"], int(s["tokens"]),
                                 s.get("documents"), s.get("sha256"), s.get("mask_sha256"))
                       for s in manifest["shards"])
    except (KeyError, TypeError, ValueError) as err:
        raise ShardError(f"{directory / MANIFEST}: malformed shard entry ({err!r})") from None
    if not shards:
        raise ShardError(f"{directory / MANIFEST}: lists no shards")
    _check_entries(shards, directory / MANIFEST)
    if len({s.mask_sha256 is None for s in shards}) > 1:
        raise ShardError(f"{directory / MANIFEST}: some shards have loss masks and some do not")
    blob = json.dumps([[s.path.name, s.tokens, s.sha256] + ([s.mask_sha256] if s.mask_sha256 else [])
                       for s in shards]).encode()
    return ShardSet(directory, shards, hashlib.sha256(blob).hexdigest()[:16])


def _check_entries(shards: tuple[ShardInfo, ...], manifest: Path) -> None:
    """Entries a damaged manifest could get wrong without failing to parse: a split that is
    neither train nor val would silently drop the shard from both splits, and a file listed
    twice would silently train on it twice."""
    seen = set()
    for info in shards:
        match = SHARD_RE.match(info.path.name)
        if info.split not in ("train", "val") or match is None or match["split"] != info.split:
            raise ShardError(f"{manifest}: malformed shard entry (file {info.path.name!r}, split {info.split!r}); "
                             "expected PREFIX_SPLIT_NNNNNN.npy with split train or val")
        if info.path.name in seen:
            raise ShardError(f"{manifest}: lists {info.path.name} twice")
        if info.tokens < 0:
            raise ShardError(f"{manifest}: {info.path.name} has a negative token count {info.tokens}")
        if not info.path.is_file():
            raise ShardError(f"{info.path}: listed in {manifest} but missing")
        if info.mask_path is not None and not info.mask_path.is_file():
            raise ShardError(f"{info.mask_path}: loss mask listed in {manifest} but missing")
        seen.add(info.path.name)


def _shard_set_without_manifest(directory: Path) -> ShardSet:
    infos = []
    matches = [(m, p) for p in directory.glob("*.npy") if (m := SHARD_RE.match(p.name))]
    for match, path in sorted(matches, key=lambda mp: (int(mp[0]["index"]), mp[1].name)):
        infos.append(ShardInfo(path, match["split"], _npy_length(path)))
    if not infos:
        raise ShardError(f"{directory}: no shards (*_train_NNNNNN.npy / *_val_NNNNNN.npy) and no {MANIFEST}")
    blob = json.dumps([[s.path.name, s.path.stat().st_size] for s in infos]).encode()
    return ShardSet(directory, tuple(infos), hashlib.sha256(blob).hexdigest()[:16])


def _npy_length(path: Path) -> int:
    return len(open_shard(ShardInfo(path, "?", -1)))


def open_shard(info: ShardInfo, verify_hash: bool = False) -> np.ndarray:
    """Memory-map one shard, checking dtype, shape, size (and sha256 when asked)."""
    path = info.path
    if not path.is_file():
        raise ShardError(f"{path}: shard file is missing")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ShardError(f"{path}: not a readable .npy shard (truncated or corrupt: {err})") from None
    if array.dtype != DTYPE:
        raise ShardError(f"{path}: dtype {array.dtype}, expected uint16 GPT-2 token ids")
    if array.ndim != 1:
        raise ShardError(f"{path}: shape {array.shape}, expected a 1-D token array")
    size = path.stat().st_size
    if size != array.offset + array.nbytes:  # also checkable without a manifest
        raise ShardError(f"{path}: {size} bytes, but its header says {len(array)} tokens = "
                         f"{array.offset + array.nbytes} bytes (truncated or padded)")
    if info.tokens >= 0 and len(array) != info.tokens:
        raise ShardError(f"{path}: holds {len(array)} tokens, the manifest says {info.tokens}")
    if verify_hash and info.sha256 and sha256_file(path) != info.sha256:
        raise ShardError(f"{path}: sha256 does not match the manifest (the file is corrupt)")
    return array


def open_mask(info: ShardInfo, verify_hash: bool = False) -> np.ndarray:
    """Memory-map a shard's loss mask: uint8 0/1, exactly one entry per token."""
    path = info.mask_path
    if path is None:
        raise ShardError(f"{info.path}: has no loss mask")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ShardError(f"{path}: not a readable .npy loss mask (missing, truncated or corrupt: {err})") from None
    if array.dtype != MASK_DTYPE or array.ndim != 1:
        raise ShardError(f"{path}: dtype {array.dtype}, shape {array.shape}: expected a 1-D uint8 loss mask")
    if info.tokens >= 0 and len(array) != info.tokens:
        raise ShardError(f"{path}: holds {len(array)} mask entries, the shard has {info.tokens} tokens")
    if verify_hash and sha256_file(path) != info.mask_sha256:
        raise ShardError(f"{path}: sha256 does not match the manifest (the file is corrupt)")
    return array


def verify_shards(shards: list[ShardInfo], rank: int = 0, world_size: int = 1) -> list[str]:
    """sha256-check this rank's share of shards (every world_size-th, from rank) against the
    manifest; returns the problems found, each naming its file. Splitting the work lets N
    ranks check a 10B-token directory (20 GB) in 1/N of the time before training starts."""
    problems = []
    for info in shards[rank::world_size]:
        try:
            open_shard(info, verify_hash=True)
            if info.mask_sha256:
                open_mask(info, verify_hash=True)
        except ShardError as err:
            problems.append(str(err))
    return problems
