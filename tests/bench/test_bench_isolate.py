"""Isolation: a crashing, hanging or over-budget case is recorded and the sweep goes on."""

import textwrap

from attnzoo.bench.isolate import Group, run_groups

PLUGIN = textwrap.dedent('''
    import os
    import time
    from dataclasses import dataclass

    from attnzoo.mechanisms.base import AttentionBase
    from attnzoo.registry import Capabilities, register

    CAPS = Capabilities(causal=False, key_padding_mask=False, cross_attention=False, exact=True,
                        deterministic=True, time="O(1)", memory="O(1)")


    @dataclass(frozen=True)
    class NoOptions:
        pass


    @register("test-crash", options=NoOptions, capabilities=CAPS)
    class Crash(AttentionBase):
        """Ends its process."""

        def attend(self, q, k, v, mask):
            os._exit(3)


    @register("test-hang", options=NoOptions, capabilities=CAPS)
    class Hang(AttentionBase):
        """Never answers."""

        def attend(self, q, k, v, mask):
            time.sleep(600)
''')


def _case(mech, n, passes=("fwd", "fwdbwd")):
    return {
        "kind": "time",
        "mechanism": mech,
        "seq_len": n,
        "batch": 1,
        "heads": 1,
        "head_dim": 8,
        "dtype": "float32",
        "causal": False,
        "device": "cpu",
        "options": {},
        "repeats": 1,
        "passes": list(passes),
        "memory": True,
        "compile": False,
    }


def test_crash_and_hang_are_recorded_and_the_sweep_goes_on(tmp_path):
    (tmp_path / "bench_plugin_mechs.py").write_text(PLUGIN)
    env = {"ATTNZOO_BENCH_IMPORTS": "bench_plugin_mechs", "PYTHONPATH": str(tmp_path)}
    seen = []
    groups = [
        Group([_case("test-crash", 32), _case("test-crash", 64)]),
        Group([_case("test-hang", 32, passes=("fwd",))]),
        Group([_case("softmax", 32, passes=("fwd",))]),
        Group(
            [{"kind": "error", "mechanism": "softmax", "seq_len": 32, "dist": "unit-variance", "options": {}}],
            fresh=False,
        ),
    ]
    records = run_groups(groups, timeout=20.0, env=env, on_records=seen.append)
    got = [(r["mechanism"], r["seq_len"], r.get("pass"), r["status"]) for r in records]
    assert got == [
        ("test-crash", 32, "fwd", "crashed"),
        ("test-crash", 32, "fwdbwd", "crashed"),
        ("test-crash", 64, "fwd", "skipped"),
        ("test-crash", 64, "fwdbwd", "skipped"),
        ("test-hang", 32, "fwd", "timeout"),
        ("softmax", 32, "fwd", "ok"),
        ("softmax", 32, None, "ok"),
    ]
    assert "worker exited with 3" in records[0]["reason"]
    assert "crashed at N=32" in records[2]["reason"]
    assert "no answer within the 20 s time budget" in records[4]["reason"]
    assert records[5]["time_regime"].startswith("glibc mmap threshold fixed at 32 MiB")
    assert len(seen) == 5  # one callback per task


def test_memory_budget_marks_the_case_and_skips_longer_ones():
    groups = [Group([_case("softmax", 64, passes=("fwdbwd",)), _case("softmax", 128, passes=("fwdbwd",))])]
    records = run_groups(groups, timeout=120.0, memory_budget_mib=1e-6)
    assert [r["status"] for r in records] == ["over-budget", "skipped"]
    assert records[0]["mem_mib"] > 1e-6 and "over the 1e-06 MiB budget" in records[0]["reason"]
