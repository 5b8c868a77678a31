"""Read and write the safetensors format with torch and the stdlib only.

The format (huggingface/safetensors, "Format" in its README):
    8 bytes      N, the header size, unsigned little-endian
    N bytes      JSON: {name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]},
                        "__metadata__": {str: str}}   (optional)
    the rest     raw little-endian tensor bytes; offsets are relative to this region
Nothing in it can execute code, which is why Hugging Face weights are read from it where
offered. The `safetensors` package does the same; pipeline/ keeps to torch + stdlib, and
tests check both implementations read each other's files.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path

import torch

from pipeline.atomic import atomic_write

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER = 100_000_000  # the reference implementation's limit; guards against garbage sizes


class SafetensorsError(ValueError):
    """A file that is not valid safetensors (the message names the file and the problem)."""


def _check_host() -> None:
    if sys.byteorder != "little":  # pragma: no cover - no big-endian machine to test on
        raise SafetensorsError("safetensors data is little-endian; this reader needs a little-endian host")


def read_header(path: str | Path) -> tuple[dict, int]:
    """Return ({name: entry}, byte offset of the data region), validating every entry."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path}: too short to be a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise SafetensorsError(f"{path}: header size {n} is impossible for a {size}-byte file "
                                   "(truncated or not safetensors)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SafetensorsError(f"{path}: header is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    data_size = size - 8 - n
    entries = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = DTYPES[entry["dtype"]]
            shape = [int(d) for d in entry["shape"]]
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: tensor {name!r} has a malformed header entry {entry!r}") from None
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= data_size or end - begin != nbytes:
            raise SafetensorsError(f"{path}: tensor {name!r} (shape {shape}, {entry['dtype']}) has "
                                   f"offsets {begin}..{end} that do not fit the data (truncated file?)")
        entries[name] = {"dtype": dtype, "shape": shape, "begin": begin, "end": end}
    return entries, 8 + n


def load_file(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, on the CPU, each in its own memory."""
    _check_host()
    entries, start = read_header(path)
    tensors = {}
    with open(path, "rb") as f:
        for name, e in entries.items():
            if e["end"] == e["begin"]:
                tensors[name] = torch.empty(e["shape"], dtype=e["dtype"])
                continue
            buf = bytearray(e["end"] - e["begin"])
            f.seek(start + e["begin"])
            if f.readinto(buf) != len(buf):
                raise SafetensorsError(f"{path}: tensor {name!r} is cut short (truncated file)")
            tensors[name] = torch.frombuffer(buf, dtype=e["dtype"]).reshape(e["shape"])
    return tensors


def save_file(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write tensors (any device, any layout) atomically as a safetensors file."""
    _check_host()
    flat = {}
    for name in sorted(tensors):
        t = tensors[name].detach()
        if t.dtype not in NAMES:
            raise SafetensorsError(f"{name}: dtype {t.dtype} has no safetensors name")
        flat[name] = t
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, t in flat.items():
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the reference writer aligns the data region to 8 bytes

    def write(f) -> None:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in flat.values():
            if t.numel():
                f.write(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)

    atomic_write(path, write)
