"""pipeline/hf.py against transformers' own GPT-2: import, export, the CLI, the local hub
cache, and the errors for missing/unexpected/mismatched tensors and unsafe pickles."""

from __future__ import annotations

import json
import shutil

import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import run_module
from pipeline.checkpoint import save_checkpoint
from pipeline.config import Config, ModelConfig
from pipeline.hf import HFError, export_hf, load_hf_gpt2, main, to_hf_state_dict
from pipeline.model import GPT

transformers = pytest.importorskip("transformers")

SMALL = dict(n_layer=2, n_head=2, n_embd=32)
BLOCK = 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A randomly initialised transformers GPT-2 (real 50257 vocab), saved the standard way."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**SMALL, n_positions=BLOCK))
    # Non-zero biases and LayerNorm affines, so a mis-mapped tensor cannot hide behind a zero/one.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(mean=1.0 if name.endswith("ln_1.weight") else 0.0, std=0.1)
    path = tmp_path_factory.mktemp("hf") / "gpt2-small-random"
    model.save_pretrained(path)
    return path


def hf_logits(model, idx):
    with torch.no_grad():
        return model.eval()(idx).logits


def ours_logits(model, idx):
    with torch.no_grad():
        return model.eval()(idx)[0][..., : model.config.vocab_size]


IDX = torch.randint(0, 50257, (2, 48), generator=torch.Generator().manual_seed(1))


def test_import_matches_transformers(hf_dir):
    theirs = transformers.GPT2LMHeadModel.from_pretrained(hf_dir)
    ours = load_hf_gpt2(str(hf_dir))
    assert ours.config == ModelConfig(**SMALL, block_size=BLOCK)
    assert ours.lm_head.weight is ours.transformer.wte.weight
    assert (ours_logits(ours, IDX) - hf_logits(theirs, IDX)).abs().max() <= 1e-5
    with torch.no_grad():
        hf_loss = theirs(IDX, labels=IDX).loss
        _, our_loss = ours(IDX[:, :-1], IDX[:, 1:])
    assert abs(hf_loss.item() - our_loss.item()) <= 1e-5


def test_export_loads_in_transformers(tmp_path):
    for bias in (True, False):  # without biases, zeros are exported: the same function
        torch.manual_seed(2)
        ours = GPT(ModelConfig(**SMALL, block_size=BLOCK, bias=bias))
        with torch.no_grad():  # break the zero-bias / unit-gain init symmetry
            for p in ours.parameters():
                if p.dim() == 1:
                    p.normal_(std=0.1)
        out = export_hf(ours, tmp_path / f"bias-{bias}")
        theirs = transformers.GPT2LMHeadModel.from_pretrained(out)
        assert (hf_logits(theirs, IDX) - ours_logits(ours, IDX)).abs().max() <= 1e-5, bias
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "bias-True")
    assert tok("Hello world")["input_ids"] == [15496, 995] and tok.eos_token_id == 50256


def test_round_trip_is_exact(tmp_path):
    torch.manual_seed(3)
    ours = GPT(ModelConfig(**SMALL, block_size=BLOCK))
    back = load_hf_gpt2(export_hf(ours, tmp_path / "x"))
    # A state dict saved through DDP(torch.compile(model)) exports the same tensors.
    wrapped = {"module._orig_mod." + k: v for k, v in ours.state_dict().items()}
    plain = to_hf_state_dict(ours.state_dict(), ours.config)
    assert all(torch.equal(plain[k], v) for k, v in to_hf_state_dict(wrapped, ours.config).items())
    for (name, a), b in zip(ours.state_dict().items(), back.state_dict().values()):
        if name == "transformer.wte.weight" or name == "lm_head.weight":
            assert torch.equal(a[:50257], b[:50257]) and b[50257:].abs().max() == 0, name
        else:
            assert torch.equal(a, b), name


def test_original_bin_format_with_mask_buffers(hf_dir, tmp_path):
    """OpenAI-era checkpoints: pytorch_model.bin, keys without 'transformer.', mask buffers."""
    tensors = load_file(hf_dir / "model.safetensors")
    legacy = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    legacy["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, BLOCK, BLOCK))
    legacy["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    legacy["lm_head.weight"] = legacy["wte.weight"]
    (tmp_path / "legacy").mkdir()
    shutil.copy(hf_dir / "config.json", tmp_path / "legacy" / "config.json")
    torch.save(legacy, tmp_path / "legacy" / "pytorch_model.bin")
    a, b = load_hf_gpt2(hf_dir), load_hf_gpt2(tmp_path / "legacy")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_sharded_safetensors_with_index(hf_dir, tmp_path):
    tensors = load_file(hf_dir / "model.safetensors")
    names = sorted(tensors)
    out = tmp_path / "sharded"
    out.mkdir()
    shutil.copy(hf_dir / "config.json", out / "config.json")
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        file = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, out / file)
        weight_map.update({n: file for n in part})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    a, b = load_hf_gpt2(hf_dir), load_hf_gpt2(out)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_bin_file_cannot_run_code(hf_dir, tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil").mkdir()
    shutil.copy(hf_dir / "config.json", tmp_path / "evil" / "config.json")
    torch.save({"wte.weight": torch.zeros(3), "x": _Evil(str(marker))}, tmp_path / "evil" / "pytorch_model.bin")
    with pytest.raises(HFError, match="weights_only=True"):
        load_hf_gpt2(tmp_path / "evil")
    assert not marker.exists()


def _variant(hf_dir, tmp_path, edit_tensors=None, edit_config=None):
    out = tmp_path / "variant"
    out.mkdir()
    tensors = load_file(hf_dir / "model.safetensors")
    config = json.loads((hf_dir / "config.json").read_text())
    if edit_tensors:
        edit_tensors(tensors)
    if edit_config:
        edit_config(config)
    save_file(tensors, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_missing_tensor_is_named(hf_dir, tmp_path):
    out = _variant(hf_dir, tmp_path, edit_tensors=lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(HFError, match=r"missing: h\.1\.mlp\.c_fc\.bias"):
        load_hf_gpt2(out)


def test_unexpected_tensor_is_named(hf_dir, tmp_path):
    out = _variant(hf_dir, tmp_path, edit_tensors=lambda t: t.update({"transformer.h.2.ln_1.weight": torch.ones(32)}))
    with pytest.raises(HFError, match=r"unexpected: h\.2\.ln_1\.weight"):
        load_hf_gpt2(out)


def test_mismatched_shape_is_named(hf_dir, tmp_path):
    out = _variant(hf_dir, tmp_path, edit_config=lambda c: c.update(n_positions=128))
    with pytest.raises(HFError, match=r"shape mismatch: wpe\.weight \[64, 32\] != expected \[128, 32\]"):
        load_hf_gpt2(out)


def test_untied_lm_head_and_foreign_architecture_are_refused(hf_dir, tmp_path):
    out = _variant(hf_dir, tmp_path, edit_tensors=lambda t: t.update({"lm_head.weight": torch.zeros(50257, 32)}))
    with pytest.raises(HFError, match="lm_head.weight differs"):
        load_hf_gpt2(out)
    (out / "config.json").write_text(json.dumps({**json.loads((hf_dir / "config.json").read_text()),
                                                 "activation_function": "relu"}))
    with pytest.raises(HFError, match="activation_function = 'relu'"):
        load_hf_gpt2(out)


def test_damaged_safetensors_is_named(hf_dir, tmp_path):
    out = _variant(hf_dir, tmp_path)
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(HFError, match="model.safetensors: not a valid safetensors file"):
        load_hf_gpt2(out)


def test_hub_name_resolves_only_through_the_local_cache(hf_dir, tmp_path, monkeypatch):
    # huggingface_hub reads HF_HOME / HF_HUB_CACHE once, at import; point its cache here.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    with pytest.raises(HFError, match="nothing is downloaded") as err:
        load_hf_gpt2("gpt2")
    assert str(tmp_path / "hf_home" / "hub") in str(err.value)
    # The layout huggingface_hub writes; "gpt2" also finds its new name openai-community/gpt2.
    repo = tmp_path / "hf_home" / "hub" / "models--openai-community--gpt2"
    shutil.copytree(hf_dir, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    model = load_hf_gpt2("gpt2")
    assert torch.equal(model.transformer.wpe.weight, load_hf_gpt2(hf_dir).transformer.wpe.weight)
    with pytest.raises(HFError, match="not a directory"):
        load_hf_gpt2(hf_dir / "config.json")


def _run_with_checkpoint(tmp_path) -> tuple:
    cfg = Config()
    cfg.model = ModelConfig(**SMALL, block_size=BLOCK)
    torch.manual_seed(4)
    model = GPT(cfg.model)
    run = tmp_path / "runs" / "tiny"
    save_checkpoint(run, 7, {"model": model.state_dict()},
                    {"step": 7, "tokens_seen": 7 * 1024, "config": cfg.to_dict()})
    return model, run


def test_cli_export_of_a_checkpoint(tmp_path, capsys):
    model, run = _run_with_checkpoint(tmp_path)
    out = tmp_path / "export"
    assert main(["export", str(run), str(out)]) == 0  # a run dir: its latest checkpoint
    theirs = transformers.GPT2LMHeadModel.from_pretrained(out)
    assert (hf_logits(theirs, IDX) - ours_logits(model, IDX)).abs().max() <= 1e-5
    capsys.readouterr()
    assert main(["export", str(run / "checkpoints" / "step_000007"), str(out)]) == 2  # no --force
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--force" in err and err.count("\n") == 1
    assert main(["export", str(run / "checkpoints" / "step_000007"), str(out), "--force"]) == 0
    assert main(["export", str(tmp_path / "nope"), str(out)]) == 2
    assert "nope" in capsys.readouterr().err


def test_cli_as_a_module_exits_2_without_traceback(tmp_path):
    bad = run_module("pipeline.hf", "export", tmp_path / "missing", tmp_path / "out", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    assert str(tmp_path / "missing") in bad.stderr
