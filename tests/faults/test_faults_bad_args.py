"""Fault kind 4b: bad command-line arguments, property-based (hypothesis), for every stage
CLI called in-process through main(argv): data_prep.fineweb, data_prep.verify,
data_prep.hellaswag, train, eval and eval.report.

Each example starts from a command that works and breaks ONE thing: a value of the wrong
type or out of range for a flag, an unknown flag, a flag without its value, a missing
input path, a combination of flags that makes no sense. Property: exit 2 with ONE
`error: ...` line naming the flag (or the path), no traceback, and nothing started: no
output directory, no run directory, no results file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import HELLASWAG_VAL
from faults._inject import call_main, describe, is_clean_error
from faults._stages import prep_argv

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

junk = st.text(st.characters(blacklist_categories=("Cs",)), max_size=10)
flag_name = st.from_regex(r"--[a-z][a-z-]{0,10}", fullmatch=True)


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def not_int(): return junk.filter(lambda s: not _is_int(s) and not s.startswith("-"))  # noqa: E704
def not_float(): return junk.filter(lambda s: not _is_float(s) and not s.startswith("-"))  # noqa: E704


def unknown_flag(known: set[str]):
    return flag_name.filter(lambda f: not any(k.startswith(f) for k in known) and f not in known)


def _assert_refused(fault_log, kind: str, main, argv: list, names: list, started: bool) -> None:
    code, _, err = call_main(main, argv)
    clean = is_clean_error(code, err, *names) and not started_after(started)
    fault_log.record(kind, " ".join(map(str, argv))[-160:], clean_error=clean)
    assert is_clean_error(code, err, *names), f"{argv}: {describe(code, err)}"


def started_after(flag) -> bool:
    return bool(flag() if callable(flag) else flag)


# -- data_prep.fineweb ------------------------------------------------------------------

FINEWEB_FLAGS = {"--dataset", "--name", "--split", "--revision", "--files", "--text-column", "--encoding-errors",
                 "--out", "--prefix", "--shard-size", "--workers", "--max-tokens", "--overwrite", "--no-progress",
                 "--help", "--hub-retries", "--hub-retry-seconds", "--hub-backoff", "--hub-max-backoff",
                 "--hub-timeout", "--allow-revision-change"}


@st.composite
def fineweb_mistake(draw, out: Path, missing: Path, a_file: Path):
    argv = prep_argv(out, "--workers", "0")
    kind = draw(st.sampled_from(["count", "workers", "choice", "missing input", "out is a file", "unknown",
                                 "no value", "hub"]))
    if kind == "hub":
        flag = draw(st.sampled_from(["--hub-retries", "--hub-retry-seconds", "--hub-backoff", "--hub-max-backoff",
                                     "--hub-timeout"]))
        bad = ["-1", "ten", "", "nan", "inf", "-inf"] + (["0"] if flag == "--hub-timeout" else []) \
            + (["1.5"] if flag == "--hub-retries" else [])
        return argv + [f"{flag}={draw(st.sampled_from(bad))}"], [flag]
    if kind == "count":
        flag = draw(st.sampled_from(["--shard-size", "--max-tokens"]))
        value = draw(st.one_of(st.sampled_from(["0", "-5", "1.5", "1e-3", "ten", ""]), not_float()))
        return argv + [f"{flag}={value}"], [flag]
    if kind == "workers":
        return argv + [f"--workers={draw(st.one_of(st.just('-1'), not_int()))}"], ["--workers"]
    if kind == "choice":
        value = draw(junk.filter(lambda s: s not in ("strict", "cp1252", "replace")))
        return argv + [f"--encoding-errors={value}"], ["--encoding-errors"]
    if kind == "missing input":
        return ["--files", str(missing), *argv[argv.index("--out"):]], [str(missing)]
    if kind == "out is a file":
        return argv[:argv.index("--out")] + ["--out", str(a_file)] + argv[argv.index("--out") + 2:], [str(a_file)]
    if kind == "unknown":
        flag = draw(unknown_flag(FINEWEB_FLAGS))
        return argv + [flag], [flag]
    flag = draw(st.sampled_from(["--shard-size", "--workers", "--out", "--prefix", "--max-tokens"]))
    return argv + [flag], [flag]


@SETTINGS
@given(data=st.data())
def test_data_prep_fineweb_refuses_bad_arguments(data, tmp_path, fault_log):
    from data_prep.fineweb import main
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    argv, names = data.draw(fineweb_mistake(out, tmp_path / "missing.txt", a_file))
    _assert_refused(fault_log, "bad args: data_prep.fineweb", main, argv, names, out.exists)
    assert not out.exists(), f"{argv}: created {out}"
    assert a_file.read_text() == "not a directory"


# -- data_prep.verify and data_prep.hellaswag -------------------------------------------

@SETTINGS
@given(data=st.data())
def test_data_prep_verify_and_hellaswag_refuse_bad_arguments(data, tmp_path, fault_log):
    from data_prep.hellaswag import main as hellaswag_main
    from data_prep.verify import main as verify_main
    missing = tmp_path / "missing"
    out = tmp_path / "hs"
    shutil.rmtree(out, ignore_errors=True)
    not_hellaswag = tmp_path / "other.jsonl"
    not_hellaswag.write_text('{"ctx": "x"}\n')
    case = data.draw(st.sampled_from(["verify missing", "verify none", "verify extra", "verify unknown",
                                      "hs missing", "hs wrong file", "hs timeout", "hs unknown", "hs no value"]))
    if case.startswith("verify"):
        main = verify_main
        argv, names = {"verify missing": ([missing], [missing]),
                       "verify none": ([], ["directory"]),
                       "verify extra": ([tmp_path, "extra"], ["extra"])}.get(case, (None, None))
        if argv is None:
            flag = data.draw(unknown_flag({"--help"}))
            argv, names = [tmp_path, flag], [flag]
    else:
        main = hellaswag_main
        base = ["--out", out, "--from"]
        if case == "hs missing":
            argv, names = [*base, missing], [missing]
        elif case == "hs wrong file":
            argv, names = [*base, not_hellaswag], [not_hellaswag, "sha256"]
        elif case == "hs timeout":
            argv, names = [*base, HELLASWAG_VAL, "--timeout", data.draw(not_float())], ["--timeout"]
        elif case == "hs unknown":
            flag = data.draw(unknown_flag({"--out", "--from", "--timeout", "--help"}))
            argv, names = [*base, HELLASWAG_VAL, flag], [flag]
        else:
            argv, names = [*base, HELLASWAG_VAL, "--timeout"], ["--timeout"]
    _assert_refused(fault_log, "bad args: data_prep.verify/hellaswag", main, argv, names,
                    lambda: (out / "hellaswag_val.jsonl").exists())
    assert not (out / "hellaswag_val.jsonl").exists()


# -- train (its own flags; config overrides are test_faults_bad_config.py) --------------

@SETTINGS
@given(data=st.data())
def test_train_refuses_bad_arguments(data, tiny_config, tiny_run, tmp_path, fault_log):
    from train.__main__ import main
    run = tmp_path / "run"
    shutil.rmtree(run, ignore_errors=True)
    missing = tmp_path / "missing"
    case = data.draw(st.sampled_from(["config missing", "no run dir", "resume missing", "resume none",
                                      "unknown", "no value"]))
    base = ["--config", tiny_config, "--run-dir", run]
    if case == "config missing":
        argv, names = ["--config", missing / "c.toml", "--run-dir", run], [missing / "c.toml"]
    elif case == "no run dir":
        argv, names = ["--config", tiny_config], ["--run-dir"]
    elif case == "resume missing":
        argv, names = [*base, "--resume", missing], [missing]
    elif case == "resume none":  # a run that has checkpoints is not silently started over
        argv, names = ["--config", tiny_config, "--run-dir", tiny_run, "--resume", "none"], ["--resume none"]
    elif case == "unknown":
        flag = data.draw(unknown_flag({"--config", "--run-dir", "--resume", "--help"}))
        argv, names = [*base, flag], [flag]
    else:  # the flag is last, without its value
        flag = data.draw(st.sampled_from(["--config", "--run-dir", "--resume"]))
        rest = [a for i, a in enumerate(base) if flag not in base[max(0, i - 1):i + 1]]
        argv, names = [*rest, flag], [flag]
    _assert_refused(fault_log, "bad args: train", main, argv, names, run.exists)
    assert not run.exists()


# -- eval and eval.report ---------------------------------------------------------------

EVAL_FLAGS = {"--checkpoint", "--hf", "--watch", "--all", "--out", "--tasks", "--hellaswag", "--hellaswag-unverified",
              "--limit", "--batch-size", "--val-data", "--val-tokens", "--seq-len", "--val-batch-size", "--device",
              "--dtype", "--force", "--no-report", "--interval", "--until-step", "--exit-when-done", "--max-idle",
              "--stop-file", "--help"}
POSITIVE_INT_FLAGS = ["--batch-size", "--val-tokens", "--seq-len", "--val-batch-size"]


@st.composite
def eval_mistake(draw, run: Path, missing: Path):
    base = ["--checkpoint", run, "--hellaswag", HELLASWAG_VAL, "--limit", "4", "--tasks", "hellaswag", "--no-report",
            "--hellaswag-unverified"]  # last: the cases below slice base[:6] and base[:-2]
    kind = draw(st.sampled_from(["int type", "int range", "float type", "device", "dtype", "tasks", "missing path",
                                 "unknown", "conflict", "no value"]))
    if kind == "int type":
        flag = draw(st.sampled_from(["--limit", "--until-step", *POSITIVE_INT_FLAGS]))
        return [*base, flag, draw(not_int())], [flag]
    if kind == "int range":
        flag = draw(st.sampled_from(["--limit", *POSITIVE_INT_FLAGS]))
        value = draw(st.integers(-10**6, -1 if flag == "--limit" else 0))
        return [*base, f"{flag}={value}"], [flag]
    if kind == "float type":
        flag = draw(st.sampled_from(["--interval", "--max-idle"]))
        return [*base, flag, draw(not_float())], [flag]
    if kind == "device":
        import torch
        bad = [d for d in ("mps", "cuda") if not (torch.cuda.is_available() if d == "cuda"
                                                 else torch.backends.mps.is_available())]
        value = draw(st.one_of(st.sampled_from(bad), junk.filter(lambda s: s not in ("auto", "cpu", "cuda", "mps"))))
        return [*base, "--device", value], ["--device"]
    if kind == "dtype":
        value = draw(junk.filter(lambda s: s not in ("auto", "float32", "bfloat16", "float16")))
        return [*base, "--dtype", value], ["--dtype"]
    if kind == "tasks":
        value = draw(junk.filter(lambda s: s != "auto" and not set(s.split(",")) <= {"hellaswag", "val"}))
        return [*base[:6], "--hellaswag-unverified", "--tasks", value, "--no-report"], ["--tasks"]
    if kind == "missing path":
        which = draw(st.sampled_from(["--checkpoint", "--hellaswag", "--val-data"]))
        if which == "--val-data":
            return [*base[:6], "--tasks", "val", "--val-data", missing], [missing]
        argv = list(base)
        argv[argv.index(which) + 1] = missing
        return argv, [missing]
    if kind == "unknown":
        flag = draw(unknown_flag(EVAL_FLAGS))
        return [*base, flag], [flag]
    if kind == "conflict":
        return draw(st.sampled_from([([*base, "--watch", run], ["--watch"]), ([*base, "--out", missing], ["--out"]),
                                     (["--hf", missing, "--all"], ["--all"])]))
    flag = draw(st.sampled_from(["--limit", "--hellaswag", "--tasks", "--device", "--interval"]))
    return [*base, flag], [flag]


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_eval_refuses_a_device_this_machine_lacks(device, eval_run, fault_log):
    import torch
    if (torch.cuda.is_available() if device == "cuda" else torch.backends.mps.is_available()):
        pytest.skip(f"this machine has {device}")
    from eval.__main__ import main
    argv = ["--checkpoint", eval_run, "--hellaswag", HELLASWAG_VAL, "--hellaswag-unverified", "--limit", "4", "--tasks", "hellaswag",
            "--no-report", "--device", device]
    _assert_refused(fault_log, "bad args: eval", main, argv, ["--device", device], (eval_run / "eval").exists)
    assert not (eval_run / "eval").exists()


@pytest.fixture(scope="module")
def eval_run(tiny_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("eval-args") / "run"
    shutil.copytree(tiny_run, run)
    return run


@SETTINGS
@given(data=st.data())
def test_eval_refuses_bad_arguments(data, eval_run, tmp_path, fault_log):
    from eval.__main__ import main
    argv, names = data.draw(eval_mistake(eval_run, tmp_path / "missing"))
    results = eval_run / "eval"
    _assert_refused(fault_log, "bad args: eval", main, argv, names, results.exists)
    assert not results.exists(), f"{argv}: wrote {results}"
    assert not (tmp_path / "missing").exists()


@SETTINGS
@given(data=st.data())
def test_eval_report_refuses_bad_arguments(data, eval_run, tmp_path, fault_log):
    from eval.report import main
    missing = tmp_path / "missing"
    case = data.draw(st.sampled_from(["run missing", "compare missing", "none", "unknown"]))
    if case == "run missing":
        argv, names = [missing], [missing]
    elif case == "compare missing":
        argv, names = [eval_run, "--compare", missing], [missing]
    elif case == "none":
        argv, names = [], ["run_dir"]
    else:
        flag = data.draw(unknown_flag({"--compare", "--help"}))
        argv, names = [eval_run, flag], [flag]
    _assert_refused(fault_log, "bad args: eval.report", main, argv, names, (eval_run / "eval").exists)
    assert not (eval_run / "eval").exists()


# -- python -m pipeline (demo, run, status, generate) -----------------------------------

@st.composite
def pipeline_mistake(draw, run: Path, tiny_config: Path, work: Path, missing: Path):
    """(argv, names, what must not appear): one mistake per command of the dispatcher."""
    command = draw(st.sampled_from(["dispatch", "demo", "run", "status", "generate"]))
    if command == "dispatch":
        word = draw(st.one_of(st.just(None), identifier_word().filter(lambda w: w not in ("demo", "run", "status",
                                                                                          "generate"))))
        return ([] if word is None else [word]), (["command"] if word is None else [word])
    if command == "demo":  # never a valid command: the demo would run for minutes
        base = ["demo", "--work-dir", work, "--offline", "--no-samples"]
        kind = draw(st.sampled_from(["limit", "limit type", "config", "override", "unknown"]))
        if kind == "limit":
            return [*base, f"--hellaswag-limit={draw(st.integers(-10**6, -1))}"], ["--hellaswag-limit"]
        if kind == "limit type":
            return [*base, "--hellaswag-limit", draw(not_int())], ["--hellaswag-limit"]
        if kind == "config":
            return [*base, "--config", missing], [missing]
        if kind == "override":
            return [*base, "--train.max_steps=0"], ["train.max_steps"]
        flag = draw(unknown_flag({"--work-dir", "--config", "--hellaswag", "--hellaswag-limit", "--offline",
                                  "--no-samples", "--help"}).filter(lambda f: "." not in f))
        return [*base, flag], [flag]
    if command == "run":  # never a valid command: a real config would start data_prep
        base = ["run", "--config", tiny_config, "--run-dir", run / "x"]
        kind = draw(st.sampled_from(["no config", "config", "nproc", "override", "unknown"]))
        if kind == "no config":
            return ["run", "--run-dir", run / "x"], ["--config"]
        if kind == "config":
            return ["run", "--config", missing, "--run-dir", run / "x"], [missing]
        if kind == "nproc":
            value = draw(st.one_of(st.integers(-100, 0).map(str), not_int()))
            return [*base, "--nproc-per-node", value], ["--nproc-per-node"]
        if kind == "override":
            return [*base, "--optim.max_lr=-1"], ["optim.max_lr"]
        flag = draw(unknown_flag({"--config", "--run-dir", "--nproc-per-node", "--data-args", "--hellaswag",
                                  "--dry-run", "--help"}))
        return [*base, flag], [flag]
    if command == "status":
        kind = draw(st.sampled_from(["missing", "none", "unknown"]))
        if kind == "missing":
            return ["status", missing], [missing]
        if kind == "none":
            return ["status"], ["run_dir"]
        flag = draw(unknown_flag({"--json", "--help"}))
        return ["status", run, flag], [flag]
    base = ["generate", "--checkpoint", run, "--max-new-tokens", "2", "--device", "cpu"]
    kind = draw(st.sampled_from(["checkpoint", "count", "count type", "temperature", "top-k", "top-p", "seed",
                                 "device", "both", "unknown"]))
    if kind == "checkpoint":
        return ["generate", "--checkpoint", missing], [missing]
    if kind == "count":
        flag = draw(st.sampled_from(["--num-samples", "--max-new-tokens"]))
        return [*base, f"{flag}={draw(st.integers(-10**6, 0))}"], [flag]
    if kind == "count type":
        flag = draw(st.sampled_from(["--num-samples", "--max-new-tokens", "--top-k", "--seed"]))
        return [*base, flag, draw(not_int())], [flag]
    if kind == "temperature":
        value = draw(st.one_of(st.floats(max_value=-1e-9, allow_infinity=False).map(repr),
                               st.sampled_from(["nan", "-inf"]), not_float()))
        return [*base, f"--temperature={value}"], ["--temperature"]
    if kind == "top-k":
        return [*base, f"--top-k={draw(st.integers(-10**6, -1))}"], ["--top-k"]
    if kind == "top-p":
        value = draw(st.one_of(st.floats(max_value=0.0).map(repr), st.floats(min_value=1.0, exclude_min=True,
                                                                             allow_nan=False).map(repr),
                               st.just("nan"), not_float()))
        return [*base, f"--top-p={value}"], ["--top-p"]
    if kind == "seed":
        value = draw(st.one_of(st.integers(2**64, 10**30), st.integers(-10**30, -2**63 - 1)))
        return [*base, f"--seed={value}"], ["--seed"]
    if kind == "device":
        import torch
        bad = [d for d in ("mps", "cuda") if not (torch.cuda.is_available() if d == "cuda"
                                                 else torch.backends.mps.is_available())]
        value = draw(st.one_of(st.sampled_from(bad), junk.filter(lambda s: s not in ("auto", "cpu", "cuda", "mps")
                                                                 and not s.startswith(("cuda:", "-")))))
        return [*base[:-2], "--device", value], ["--device"]
    if kind == "both":
        return [*base, "--hf", "gpt2"], ["--hf"]
    flag = draw(unknown_flag({"--checkpoint", "--hf", "--prompt", "--num-samples", "--max-new-tokens", "--temperature",
                              "--top-k", "--top-p", "--seed", "--device", "--help"}))
    return [*base, flag], [flag]


def identifier_word():
    return st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True)


@SETTINGS
@given(data=st.data())
def test_pipeline_commands_refuse_bad_arguments(data, eval_run, tiny_config, tmp_path, fault_log):
    from pipeline.__main__ import main
    work, missing = tmp_path / "work", tmp_path / "missing"
    argv, names = data.draw(pipeline_mistake(eval_run, tiny_config, work, missing))
    _assert_refused(fault_log, "bad args: pipeline", main, argv, names,
                    lambda: work.exists() or (eval_run / "x").exists())
    assert not work.exists() and not (eval_run / "x").exists()
