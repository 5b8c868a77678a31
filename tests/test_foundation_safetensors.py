"""pipeline/safetensors_io.py against the reference `safetensors` package, both directions,
and its errors on damaged files."""

from __future__ import annotations

import struct

import pytest
import torch

from pipeline.safetensors_io import SafetensorsError, load_file, read_header, save_file

st = pytest.importorskip("safetensors.torch")


def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w.f32": torch.randn(7, 5, generator=g),
        "w.bf16": torch.randn(3, 4, generator=g).bfloat16(),
        "w.f16": torch.randn(6, generator=g).half(),
        "w.f64": torch.randn(2, 2, 2, generator=g).double(),
        "ids.i64": torch.arange(-5, 5),
        "ids.i32": torch.arange(9, dtype=torch.int32),
        "mask": torch.tensor([True, False, True]),
        "bytes": torch.arange(250, 256, dtype=torch.uint8),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "transposed": torch.randn(4, 3, generator=g).t(),  # non-contiguous input
    }


def test_reference_reads_our_files(tmp_path):
    tensors = sample_tensors()
    save_file(tensors, tmp_path / "ours.safetensors", {"format": "pt", "step": "7"})
    theirs = st.load_file(tmp_path / "ours.safetensors")
    assert theirs.keys() == tensors.keys()
    for name, t in tensors.items():
        assert theirs[name].dtype == t.dtype and torch.equal(theirs[name], t), name
    from safetensors import safe_open
    with safe_open(tmp_path / "ours.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt", "step": "7"}


def test_we_read_reference_files(tmp_path):
    tensors = {k: v.contiguous() for k, v in sample_tensors().items()}
    st.save_file(tensors, tmp_path / "ref.safetensors", metadata={"format": "pt"})
    ours = load_file(tmp_path / "ref.safetensors")
    assert ours.keys() == tensors.keys()
    for name, t in tensors.items():
        assert ours[name].dtype == t.dtype and torch.equal(ours[name], t), name
    ours["w.f32"].add_(1)  # each tensor owns writable memory


def test_damaged_files_name_the_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(100)}, path)
    data = path.read_bytes()
    cases = {
        "truncated": data[:-10],
        "tiny": data[:5],
        "huge header size": struct.pack("<Q", 1 << 40) + data[8:],
        "not json": data[:8] + b"\xff" * (len(data) - 8),
    }
    for name, blob in cases.items():
        bad = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        bad.write_bytes(blob)
        with pytest.raises(SafetensorsError) as err:
            load_file(bad)
        assert str(bad) in str(err.value), name


def test_header_offsets_are_checked(tmp_path):
    header = b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}'
    path = tmp_path / "lying.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(SafetensorsError, match="'a'"):
        read_header(path)
