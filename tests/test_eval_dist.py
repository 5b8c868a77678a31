"""torchrun -m eval with 2 ranks (gloo) gives the numbers of one process."""

from __future__ import annotations

import shutil

import pytest

from _eval_support import make_run, make_val_shards, results, tiny_config
from conftest import HELLASWAG_VAL, run_torchrun
from eval.__main__ import main

# An odd count, so the ranks get different numbers of examples (31 and 30).
ARGS = ["--hellaswag", str(HELLASWAG_VAL), "--hellaswag-unverified", "--limit", "61", "--batch-size", "16", "--no-report"]


def test_two_ranks_give_the_same_counts_and_val_loss_as_one_process(tmp_path):
    data = make_val_shards(tmp_path / "shards", n_chars=20_000)
    single = make_run(tmp_path / "single", tiny_config(data, val_tokens=2048), steps=[10], metrics=False)
    double = tmp_path / "double"
    shutil.copytree(single, double)

    assert main(["--checkpoint", str(single), *ARGS]) == 0
    run_torchrun(2, "eval", "--checkpoint", double, *ARGS, timeout=300)

    one = {r["metric"]: r for r in results(single)}
    two = {r["metric"]: r for r in results(double)}
    assert set(one) == set(two) == {"hellaswag_acc", "hellaswag_acc_norm", "val_loss", "val_bpb"}
    for metric in ("hellaswag_acc", "hellaswag_acc_norm"):
        assert two[metric]["n"] == one[metric]["n"] == 61
        assert round(two[metric]["value"] * 61) == round(one[metric]["value"] * 61), metric
    assert two["val_loss"]["n"] == one["val_loss"]["n"] == 2048
    assert two["val_loss"]["value"] == pytest.approx(one["val_loss"]["value"], abs=1e-5)
    assert two["val_bpb"]["value"] == pytest.approx(one["val_bpb"]["value"], abs=1e-5)
    assert [r["world_size"] for r in results(double)] == [2, 2, 2, 2]  # rank 0 alone wrote, once
