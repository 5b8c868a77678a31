"""eval.report: report.md, a self-contained report.html, PNG plots with the expected series."""

from __future__ import annotations

import base64
import re

import matplotlib.image
import pytest

from _eval_support import TOKENS_PER_STEP, make_run, tiny_config
from eval.plots import plot_hellaswag, plot_loss
from eval.report import main, write_report
from eval.results import append_result
from eval.rundata import load_run
from pipeline.atomic import append_line


def add_results(run, steps, acc_norm, val_loss, n=500):
    for step in steps:
        base = dict(step=step, tokens_seen=step * TOKENS_PER_STEP, checkpoint=f"{run}/checkpoints/step_{step:06d}",
                    checkpoint_sha256=f"{step:064x}", n=n)
        append_result(run, dict(base, metric="hellaswag_acc", value=acc_norm - 0.01, data_sha256="h"))
        append_result(run, dict(base, metric="hellaswag_acc_norm", value=acc_norm, data_sha256="h"))
        append_result(run, dict(base, metric="val_loss", value=val_loss + 1 / step, data_sha256="v"))


@pytest.fixture()
def run(tmp_path):
    run = make_run(tmp_path / "alpha", tiny_config(max_steps=30), steps=[10, 20, 30])
    add_results(run, [10, 20, 30], acc_norm=0.27, val_loss=4.1)
    return run


def _png_ok(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600
    assert pixels.std() > 0.05  # not a blank canvas


def test_report_files_exist_and_html_is_self_contained(run):
    assert main([str(run)]) == 0
    out = run / "eval"
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    for name in ("loss", "hellaswag"):
        png = out / "plots" / f"{name}.png"
        _png_ok(png)
        assert f"](plots/{name}.png)" in md
        assert base64.b64encode(png.read_bytes()).decode() in html  # embedded, byte for byte
    assert re.findall(r"(?:src|href)=['\"](?!data:)", html) == []  # nothing outside the file
    # the checkpoints table: one row per evaluated step, with its numbers
    assert "| 20 | 10.2k | 4.1500 | — | 0.2600 | 0.2700 | 500 | — | on disk |" in md
    assert "GPT-2 124M HellaSwag acc_norm (0.2955)" in md and "GPT-3 124M" in md
    # generated samples from metrics.jsonl, newest first, HTML-escaped
    assert md.index("Samples at step 30") < md.index("Samples at step 20")
    assert "&lt;step 30&gt; &amp; more" in html


def test_plots_hold_the_expected_series(run, tmp_path):
    data = load_run(run)
    loss = plot_loss([data], tmp_path / "loss.png")
    assert loss["train loss (raw)"] == 30
    assert loss["train loss (smoothed, 5-point mean)"] == 30
    assert loss["val loss (in-loop)"] == 3 and loss["val loss (eval)"] == 3
    assert loss["GPT-2 124M val loss on FineWeb-Edu (3.2924)"] == 1
    hs = plot_hellaswag([data], tmp_path / "hs.png")
    assert hs["acc_norm (in-loop, n=100)"] == 3 and hs["acc_norm (eval, n=500)"] == 3
    assert {"GPT-2 124M HellaSwag acc_norm (0.2955)", "GPT-3 124M HellaSwag acc_norm (0.337)"} <= set(hs)
    _png_ok(tmp_path / "loss.png")
    _png_ok(tmp_path / "hs.png")
    # x is tokens seen: the last train point sits at 30 steps x 512 tokens
    assert data.train[-1][0] == 30 * TOKENS_PER_STEP and data.val_eval[-1] == (30 * TOKENS_PER_STEP, 4.1 + 1 / 30)


def test_compare_overlays_runs_and_draws_untimed_baselines(run, tmp_path):
    beta = make_run(tmp_path / "beta", tiny_config(max_steps=20), steps=[20], metrics=True)
    add_results(beta, [20], acc_norm=0.29, val_loss=3.9, n=10042)
    baseline = tmp_path / "hf-gpt2"
    append_result(baseline, dict(step=None, tokens_seen=None, checkpoint="hf:gpt2", checkpoint_sha256="g",
                                 metric="hellaswag_acc_norm", value=0.2955, n=10042, data_sha256="h"))
    paths = write_report(run, [beta, baseline])
    assert [p.name for p in paths] == ["report_compare.md", "report_compare.html", "loss_compare.png",
                                       "hellaswag_compare.png"]
    hs = plot_hellaswag([load_run(p) for p in (run, beta, baseline)], tmp_path / "c.png")
    assert hs["alpha: acc_norm (eval, n=500)"] == 3 and hs["beta: acc_norm (eval, n=10042)"] == 1
    assert hs["hf-gpt2: acc_norm of hf:gpt2 (0.2955)"] == 1
    md = paths[0].read_text()
    assert "## Run alpha" in md and "## Run beta" in md and "| hf:gpt2 |" in md
    assert not (run / "eval" / "report.md").exists()  # the run's own report is left alone


def test_torn_and_garbled_lines_do_not_stop_a_report(run):
    with open(run / "metrics.jsonl", "a") as f:
        f.write("{not json}\n")
    append_line(run / "metrics.jsonl", '{"step": 31, "kind": "train", "loss": 3.9, "tokens": 15872}')
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 32, "kind": "tr')  # a writer killed mid-line
    write_report(run)
    md = (run / "eval" / "report.md").read_text()
    assert "2 unreadable line(s)" in md
    assert load_run(run).train[-1] == (15872, 3.9)


def test_report_cli_errors_on_a_missing_run(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope'}: no such run directory\n"


def test_no_hellaswag_data_means_no_plot_but_one_sentence(tmp_path):
    run = make_run(tmp_path / "bare", tiny_config(max_steps=5), steps=[5], metrics=False)
    append_line(run / "metrics.jsonl", '{"step": 1, "kind": "train", "loss": 9.5, "tokens": 512}')
    (run / "eval" / "plots").mkdir(parents=True)
    (run / "eval" / "plots" / "hellaswag.png").write_bytes(b"stale")  # from an earlier report
    assert plot_hellaswag([load_run(run)], tmp_path / "hs.png") == {} and not (tmp_path / "hs.png").exists()
    paths = write_report(run)
    assert [p.name for p in paths] == ["report.md", "report.html", "loss.png"]
    assert not (run / "eval" / "plots" / "hellaswag.png").exists()
    md, page = paths[0].read_text(), paths[1].read_text()
    assert "No HellaSwag acc_norm results yet" in md and "hellaswag.png" not in md
    assert "No HellaSwag acc_norm results yet" in page and page.count("data:image/png") == 1


@pytest.mark.parametrize("low,high", [(0, 1), (0, 3), (0, 7), (1_000_000, 1_000_500), (0, 2e10),
                                      (5e8, 5e8 + 40), (12_345, 12_349)])
def test_token_tick_labels_read_differently_at_every_scale(low, high):
    import matplotlib.pyplot as plt

    from eval.plots import _new_axes
    fig, ax = _new_axes("t", "y")
    ax.plot([low, high], [0, 1])
    ax.set_xlim(low, high)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if low <= t.get_position()[0] <= high]
    plt.close(fig)
    assert len(labels) >= 2 and len(set(labels)) == len(labels), labels


def test_bpb_and_core_plots_appear_once_there_are_points(run):
    paths = write_report(run)
    assert not any(p.name in ("bpb.png", "core.png") for p in paths)  # no bpb/CORE results yet
    for step in (10, 20, 30):
        base = dict(step=step, tokens_seen=step * TOKENS_PER_STEP, checkpoint=f"{run}/checkpoints/step_{step:06d}",
                    checkpoint_sha256=f"{step:064x}", n=40, data_sha256="c")
        append_result(run, dict(base, metric="val_bpb", value=1.5 - step / 100))
        append_result(run, dict(base, metric="core", value=step / 300))
        for task in ("hellaswag", "lambada"):
            append_result(run, dict(base, metric=f"core_centered/{task}", value=step / 200))
    data = load_run(run)
    assert [round(v, 3) for _, v in data.bpb_eval] == [1.4, 1.3, 1.2]
    assert sorted(data.core_eval) == ["core", "hellaswag", "lambada"]
    paths = write_report(run)
    names = {p.name for p in paths}
    assert {"bpb.png", "core.png"} <= names
    for p in paths:
        if p.suffix == ".png":
            _png_ok(p)
    md = (run / "eval" / "report.md").read_text()
    assert "CORE vs tokens" in md and "| val bpb |" in md and "CORE 0.1000" in md
