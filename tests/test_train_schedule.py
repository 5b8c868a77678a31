"""Step arithmetic: grad accumulation (or a useful error) and warmup + cosine LR."""

from __future__ import annotations

import math

import pytest

from pipeline.config import ConfigError, OptimConfig
from train.metrics import mfu, peak_flops
from train.schedule import grad_accum_steps, lr_at


def test_grad_accum_for_the_gpt2_124m_batch():
    assert grad_accum_steps(524_288, 64, 1024, 8) == 1
    assert grad_accum_steps(524_288, 16, 1024, 8) == 4
    assert grad_accum_steps(524_288, 32, 1024, 1) == 16


def test_impossible_batch_arithmetic_proposes_valid_micro_batches():
    with pytest.raises(ConfigError) as err:
        grad_accum_steps(524_288, 48, 1024, 8)
    message = str(err.value)
    assert "train.total_batch_size = 524288" in message and "48 x 1024 x 8" in message
    proposed = [int(x) for x in message.split("valid train.micro_batch_size values: ")[1].split(", ")]
    assert proposed and all(524_288 % (m * 1024 * 8) == 0 for m in proposed)
    assert 32 in proposed and 64 in proposed


def test_total_batch_not_a_multiple_of_seq_times_world_proposes_totals():
    with pytest.raises(ConfigError, match=r"--train.total_batch_size=\d+"):
        grad_accum_steps(500_000, 16, 1024, 8)


def test_lr_warmup_cosine_and_floor():
    cfg = OptimConfig(max_lr=6e-4, min_lr_ratio=0.1, warmup_steps=10)
    assert lr_at(0, cfg, 100) == pytest.approx(6e-5)  # (0+1)/10: the first update is not wasted
    assert lr_at(9, cfg, 100) == pytest.approx(6e-4)
    assert lr_at(10, cfg, 100) == pytest.approx(6e-4)
    midpoint = 10 + 45
    assert lr_at(midpoint, cfg, 100) == pytest.approx(6e-5 + 0.5 * (6e-4 - 6e-5))
    assert lr_at(100, cfg, 100) == pytest.approx(6e-5) and lr_at(10_000, cfg, 100) == pytest.approx(6e-5)
    values = [lr_at(s, cfg, 100) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone after warmup
    assert lr_at(3, OptimConfig(warmup_steps=0), 10) < 6e-4 and not math.isnan(lr_at(0, OptimConfig(warmup_steps=0), 1))


def test_mfu_uses_the_configured_peak_and_the_world_size():
    import torch
    assert peak_flops(torch.device("cpu")) is None
    assert peak_flops(torch.device("cpu"), 100.0) == 100e12
    assert mfu(6e8, 1e5, 100e12, 2) == pytest.approx(6e8 * 1e5 / 200e12)
    assert mfu(6e8, 1e5, None, 1) is None
