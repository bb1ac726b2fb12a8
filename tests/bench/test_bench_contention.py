"""``attnzoo bench --contention K``: busy processes started, busy and always reaped; records, compare and report
keyed by the load."""

import argparse
import json
import os
import signal
import time
from pathlib import Path

import pytest

import attnzoo.bench.contention as contention
from attnzoo.bench.compare import case_id
from attnzoo.bench.contention import Contention, contention_count, load_key
from attnzoo.bench.report import add_floor, format_report, load_ratios
from attnzoo.cli import main

linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc/<pid>/stat")


def _gone(pid: int) -> bool:
    """True once ``pid`` no longer exists (a zombie, exited but not reaped, still does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _stat(pid: int) -> list[str]:
    """Fields 3.. of ``/proc/<pid>/stat`` (after the command name)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_ticks(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[11]) + int(fields[12])  # utime + stime


@linux_only
def test_busy_processes_work_beside_the_block_and_are_reaped_after():
    with Contention(2, "spin") as load:
        pids = load.pids
        assert len(set(pids)) == 2 and not any(_gone(p) for p in pids)
        start = [_cpu_ticks(p) for p in pids]
        deadline = time.monotonic() + 10.0

        def busy() -> bool:
            return all(_cpu_ticks(p) - s >= 5 for p, s in zip(pids, start, strict=True))

        while time.monotonic() < deadline and not busy():
            time.sleep(0.05)
        assert busy(), "the busy processes are not using the CPU"
        assert all(os.getsid(p) == p for p in pids)  # own session: a Ctrl-C in the terminal does not reach them
    assert load.pids == [] and all(_gone(p) for p in pids)


@pytest.mark.parametrize("error", [RuntimeError("the benchmark failed"), KeyboardInterrupt()])
def test_busy_processes_are_reaped_when_the_benchmark_raises(error):
    with pytest.raises(type(error)), Contention(2, "spin") as load:
        pids = load.pids
        assert not any(_gone(p) for p in pids)
        raise error
    assert len(pids) == 2 and all(_gone(p) for p in pids)


@linux_only
def test_a_train_process_runs_on_one_thread():
    """The training-like load imports torch and runs its MLP step on one thread (OMP_NUM_THREADS=1)."""
    with Contention(1, "train") as load:
        (pid,) = load.pids
        assert int(_stat(pid)[17]) == 1  # num_threads
    assert _gone(pid)


def test_zero_busy_processes_start_nothing():
    with Contention(0, "matmul") as load:
        assert load.pids == []
        assert load.fields() == {"contention": 0, "contention_kind": None}


def test_a_busy_process_that_dies_at_start_is_an_error_and_nothing_is_left(tmp_path):
    script = tmp_path / "fail.sh"
    script.write_text("#!/bin/sh\necho 'cannot start' >&2\nexit 3\n")
    script.chmod(0o755)
    load = Contention(2, "spin", python=str(script))
    with pytest.raises(RuntimeError, match=r"busy spin process \d+ exited with 3 within 120 s: cannot start"):
        load.__enter__()
    assert load.pids == []  # both reaped


def test_check_names_a_busy_process_that_exited_during_the_run():
    with Contention(2, "spin") as load:
        first, second = load.pids
        load.check()  # all running: no error
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        with pytest.raises(RuntimeError) as lost:
            while time.monotonic() < deadline:
                load.check()
                time.sleep(0.02)
        assert f"1 of 2 busy spin processes exited during the benchmark: {first} (exit code -9" in str(lost.value)
    assert _gone(first) and _gone(second)


@pytest.mark.parametrize(
    ("count", "kind", "message"),
    [
        (-1, "spin", "number of busy processes must be a whole number >= 0, got -1"),
        (1.5, "spin", "got 1.5"),
        (True, "spin", "got True"),
        (1, "sleep", "contention kind 'sleep' is not one of train, matmul, spin"),
    ],
)
def test_contention_refuses_bad_counts_and_kinds(count, kind, message):
    with pytest.raises(ValueError, match=message):
        Contention(count, kind)


def test_busy_step_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="contention kind 'io' is not one of train, matmul, spin"):
        contention.busy_step("io")


def test_contention_count_parses_non_negative_whole_numbers():
    assert contention_count("0") == 0 and contention_count("3") == 3
    for text in ("-1", "two", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"busy processes >= 0, got '{text}'"):
            contention_count(text)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--contention", "-1"], "argument --contention: expected a whole number of busy processes >= 0, got '-1'"),
        (["--contention-kind", "sleep"], "argument --contention-kind: invalid choice: 'sleep'"),
        (["--threads", "0"], "argument --threads: expected a whole number > 0, got '0'"),
    ],
)
def test_bench_refuses_bad_load_options_when_parsing(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", *argv])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_bench_refuses_a_repeated_contention(capsys):
    assert main(["bench", "--mechanisms", "softmax", "--contention", "0", "2", "2"]) == 2
    assert "--contention 0 2 2: give each number of busy processes once" in capsys.readouterr().err


@pytest.fixture
def started(monkeypatch):
    """The pids of every busy process ``attnzoo bench`` starts (read inside each ``with`` block)."""
    pids: list[int] = []

    class Recording(Contention):
        def __enter__(self):
            super().__enter__()
            pids.extend(self.pids)
            return self

    monkeypatch.setattr(contention, "Contention", Recording)
    return pids


TINY = ["bench", "--mechanisms", "softmax", "--lengths", "64", "--shapes", "1x1x8", "--repeats", "1"]
TINY += ["--no-errors", "--no-memory", "--forward-only"]


@pytest.mark.slow
def test_a_contended_sweep_end_to_end(tmp_path, started, capsys):
    out = tmp_path / "records.jsonl"
    argv = [*TINY, "--contention", "1", "--contention-kind", "spin", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["kind"] for r in records] == ["peak", "time"] and all(r["status"] == "ok" for r in records)
    assert {(r["contention"], r["contention_kind"], r["threads"]) for r in records} == {(1, "spin", 1)}
    assert len(started) == 1 and _gone(started[0])
    captured = capsys.readouterr()
    assert f"# load: 1 busy spin process, 1 thread (pids {started[0]})" in captured.err
    assert "#### cpu, float32, B=1 H=1 d=8, non-causal, 1 busy spin process, 1 thread" in captured.out
    assert "--contention 1 --contention-kind spin --threads 1" in captured.out  # the command that reruns it


def test_bench_runs_the_sweep_once_per_load_and_keys_the_records(monkeypatch, started, capsys):
    """``--contention 0 2``: the groups run quiet, then beside two busy processes; every record carries its load,
    the workers get ``--threads``, the report gets the side-by-side table."""
    import attnzoo.bench.isolate

    calls = []

    def fake(groups, **kwargs):
        calls.append((len(started), all(not _gone(p) for p in started), kwargs["env"]))
        ms = {"softmax": 2.0, "local": 3.0 if len(calls) == 1 else 9.0}
        tasks = [task for group in groups for task in group.tasks if task["kind"] == "time"]
        records = [{**task, "pass": "fwd", "status": "ok", "ms": ms[task["mechanism"]], "threads": 1} for task in tasks]
        kwargs["on_records"](records)  # as run_groups does, task by task
        return records

    monkeypatch.setattr(attnzoo.bench.isolate, "run_groups", fake)
    argv = ["bench", "--mechanisms", "softmax", "local", "--lengths", "64", "--no-errors", "--forward-only"]
    assert main([*argv, "--contention", "0", "2", "--contention-kind", "spin", "--threads", "1"]) == 0
    threads = {"ATTNZOO_BENCH_THREADS": "1"}
    assert calls == [(0, True, threads), (2, True, threads)]  # quiet first, then with both busy processes running
    assert all(_gone(p) for p in started)
    report = capsys.readouterr().out
    row = "| local | softmax | 64 | fwd | cpu, float32, B=1 H=8 d=64, non-causal, 1 thread | 1.500 | 4.500 | 3.00 |"
    assert row in report


def test_the_worker_sets_its_threads_and_says_so():
    from attnzoo.bench.isolate import Worker

    task = {"kind": "time", "mechanism": "softmax", "seq_len": 16, "batch": 1, "heads": 1, "head_dim": 4}
    task.update(options={}, repeats=1, passes=["fwd"], memory=False)
    worker = Worker(env={"ATTNZOO_BENCH_THREADS": "1"})
    try:
        (rec,), alive = worker.run(task, timeout=120.0)
    finally:
        worker.close()
    assert alive and rec["status"] == "ok" and rec["threads"] == 1  # the machine's default is 2 (nproc)


def test_busy_processes_are_gone_when_the_sweep_raises(monkeypatch, started):
    import attnzoo.bench.isolate

    def broken(*args, **kwargs):
        assert started and not any(_gone(p) for p in started)  # the load runs while the cases do
        raise RuntimeError("a worker could not be started")

    monkeypatch.setattr(attnzoo.bench.isolate, "run_groups", broken)
    with pytest.raises(RuntimeError, match="a worker could not be started"):
        main([*TINY, "--contention", "2", "--contention-kind", "spin"])
    assert len(started) == 2 and all(_gone(p) for p in started)


@linux_only
def test_a_sweep_stopped_early_keeps_the_records_it_measured(monkeypatch, started, tmp_path, capsys):
    """Quiet records, then a busy process killed during the loaded sweep: both loads' records are written (the
    loaded ones marked ``load_incomplete``), and the error still stops the command."""
    import attnzoo.bench.isolate

    def fake(groups, *, on_records, **kwargs):
        tasks = [task for group in groups for task in group.tasks if task["kind"] == "time"]
        for task in tasks:
            on_records([{**task, "pass": "fwd", "status": "ok", "ms": 1.0}])
        if started:  # the loaded sweep: its busy process dies before the end
            os.kill(started[0], signal.SIGKILL)
            deadline = time.monotonic() + 10.0
            while _stat(started[0])[0] != "Z" and time.monotonic() < deadline:  # dead, not yet reaped
                time.sleep(0.02)
        return []

    monkeypatch.setattr(attnzoo.bench.isolate, "run_groups", fake)
    out = tmp_path / "sweep"
    with pytest.raises(RuntimeError, match="1 of 1 busy spin processes exited during the benchmark"):
        main([*TINY, "--contention", "0", "1", "--contention-kind", "spin", "--out-dir", str(out)])
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [(r["contention"], r.get("load_incomplete", False)) for r in records] == [(0, False), (1, True)]
    assert all(r["env"]["torch"] for r in records)
    assert "# attnzoo bench: stopped early; the 2 records measured are written" in capsys.readouterr().err


def test_the_printed_command_reruns_the_same_loads():
    import shlex

    from attnzoo.bench.cli import _command, _sweep
    from attnzoo.cli import build_parser

    parser = build_parser()
    args = parser.parse_args([*TINY, "--contention", "0", "3", "--contention-kind", "matmul", "--threads", "2"])
    again = parser.parse_args(shlex.split(_command(*_sweep(args)[:2], args))[1:])
    assert (again.contention, again.contention_kind, again.threads) == ([0, 3], "matmul", 2)
    quiet = parser.parse_args(TINY)
    assert "--contention" not in _command(*_sweep(quiet)[:2], quiet) and quiet.contention == [0]


def _rec(kind, mech, ms, count=0, load_kind=None, **extra):
    rec = {"kind": kind, "mechanism": mech, "seq_len": 256, "pass": "fwdbwd", "dtype": "float32", "causal": False}
    rec.update(batch=1, heads=8, head_dim=64, device="cpu", compile=False, status="ok", ms=ms, iqr_ms=0.0)
    return {**rec, "contention": count, "contention_kind": load_kind, **extra}


def test_load_labels():
    assert contention.load_label(0, None) == "quiet" and contention.load_label(0, None, 1) == "1 thread"
    assert contention.load_label(1, "spin") == "1 busy spin process"
    assert contention.load_label(2, "train", 4) == "2 busy train processes, 4 threads"


def test_load_key_treats_records_without_load_fields_as_quiet():
    old = {k: v for k, v in _rec("time", "local", 1.0).items() if not k.startswith("contention")}
    assert load_key(old) == load_key(_rec("time", "local", 1.0)) == (0, None, None)
    assert load_key(_rec("time", "local", 1.0, 2, "train", threads=1)) == (2, "train", 1)
    assert load_key({"contention": 0, "contention_kind": "train"}) == (0, None, None)


def test_compare_matches_quiet_with_old_records_and_never_with_contended():
    quiet = _rec("time", "local", 1.0)
    old = {k: v for k, v in quiet.items() if not k.startswith("contention")}
    assert case_id(old) == case_id(quiet)
    assert case_id(quiet) != case_id(_rec("time", "local", 1.0, 2, "train"))
    assert case_id(_rec("time", "local", 1.0, 2, "train")) != case_id(_rec("time", "local", 1.0, 2, "spin"))
    assert case_id(quiet) != case_id({**quiet, "threads": 1})


def _quiet_and_contended():
    recs = [_rec("time", "softmax", 4.0), _rec("time", "local", 8.0)]  # quiet: local 2x softmax
    recs += [_rec("time", "softmax", 6.0, 2, "train"), _rec("time", "local", 36.0, 2, "train")]  # contended: 6x
    recs += [_rec("time", "softmax", 5.0, 1, "spin"), _rec("time", "local", 12.5, 1, "spin")]  # contended: 2.5x
    peer = {"peer": "local-attention"}
    recs += [_rec("peer", "local", None, ratio=0.5, **peer), _rec("peer", "local", None, 2, "train", ratio=1.3, **peer)]
    return recs


def test_load_ratios_pair_each_case_with_its_baseline_under_the_same_load():
    ratios = load_ratios(_quiet_and_contended())
    setting = ("fwdbwd", "float32", False, 1, 8, 64, "cpu", False, False, 0, None, None)
    assert ratios[("local", "softmax", 256, setting)] == {(0, None): 2.0, (2, "train"): 6.0, (1, "spin"): 2.5}
    assert ratios[("local", "local-attention", 256, setting)] == {(0, None): 0.5, (2, "train"): 1.3}
    assert len(ratios) == 2  # softmax is no row of its own


def test_report_puts_quiet_and_contended_ratios_side_by_side():
    report = format_report(_quiet_and_contended(), {}, "attnzoo bench --contention 0 1 2")
    title = "### Ratio to softmax/peer, quiet vs contended"
    assert title in report
    table = report.split(title)[1]
    header = "| mechanism | against | N | pass | setting | quiet | 1 busy spin process | 2 busy train processes |"
    assert header + " worst contended / quiet |" in table
    row = "| local | softmax | 256 | fwdbwd | cpu, float32, B=1 H=8 d=64, non-causal | 2.000 | 2.500 | 6.000 | 3.00 |"
    assert row in table  # worst: 6.0 / 2.0 under the training load (the spin's 2.5 / 2.0 is less)
    peer_row = "| local | local-attention | 256 | fwdbwd | cpu, float32, B=1 H=8 d=64, non-causal | 0.500 | - | 1.300 |"
    assert peer_row + " 2.60 |" in table  # no spin run of the peer pair: "-"
    assert "#### cpu, float32, B=1 H=8 d=64, non-causal, 2 busy train processes" in report  # its own time table
    assert "| local-attention, 2 busy train processes | local | 256 |" in report  # the peer table names the load


def test_report_has_no_load_table_without_both_quiet_and_contended_runs():
    recs = _quiet_and_contended()
    quiet = [r for r in recs if not r["contention"]]
    contended = [r for r in recs if r["contention"]]
    for part in (quiet, contended):
        assert "quiet vs contended" not in format_report(part, {}, "attnzoo bench")


def test_the_floor_uses_the_peak_measured_under_the_same_load():
    peak = {"kind": "peak", "device": "cpu", "dtype": "float32", "status": "ok"}
    recs = [{**peak, "flops_per_s": 1e11}, {**peak, "flops_per_s": 5e10, "contention": 2, "contention_kind": "train"}]
    recs += [_rec("time", "local", 10.0, flops=1e9), _rec("time", "local", 10.0, 2, "train", flops=1e9)]
    add_floor(recs)
    assert recs[2]["floor_ms"] == pytest.approx(10.0) and recs[3]["floor_ms"] == pytest.approx(20.0)
