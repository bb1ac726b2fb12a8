"""Public peers: matched settings on the same q, k, v, missing packages reported, the xformers stand-in.

The tests of the third-party packages run where they are installed (``/work/peers-venv/bin/python -m
pytest tests/bench/test_bench_peers.py``) and are skipped elsewhere.
"""

import importlib.util
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from attnzoo.bench import peers
from attnzoo.bench.accuracy import relative_error
from attnzoo.bench.worker import run_task


def _task(peer, n=256, passes=("fwd", "fwdbwd"), options=None):
    return {
        "kind": "peer",
        "peer": peer,
        "seq_len": n,
        "batch": 1,
        "heads": 2,
        "head_dim": 16,
        "dtype": "float32",
        "causal": False,
        "device": "cpu",
        "options": options or {},
        "repeats": 1,
        "passes": list(passes),
    }


def test_sdpa_peer_is_attnzoo_softmax():
    records = run_task(_task("sdpa"))
    assert [(r["pass"], r["status"]) for r in records] == [("fwd", "ok"), ("fwdbwd", "ok")]
    assert all(r["out_rel_diff"] < 1e-6 and r["ratio"] > 0 and r["peer_mem_mib"] is not None for r in records)
    assert records[0]["ratio"] == pytest.approx(records[0]["attnzoo_ms"] / records[0]["peer_ms"])


@pytest.mark.compile
def test_flex_sliding_window_matches_local_and_has_no_cpu_backward():
    fwd, both = run_task(_task("flex-sliding", options={"window_size": 32}))
    assert fwd["status"] == "ok" and fwd["out_rel_diff"] < 1e-5
    assert fwd["peer_settings"] == {"window": 32, "BLOCK_SIZE": 128}
    assert both["status"] == "peer unsupported" and "no backward on CPU" in both["reason"]


def test_missing_package_is_a_record_not_an_error(monkeypatch):
    ghost = peers.Peer("ghost", "attnzoo_no_such_package", "softmax", peers._sdpa, True, "none")
    monkeypatch.setattr(peers, "PEERS", (*peers.PEERS, ghost))
    records = run_task(_task("ghost"))
    assert [r["status"] for r in records] == ["missing", "missing"]
    assert "attnzoo_no_such_package" in records[0]["reason"]


def test_xformers_stand_in_is_sdpa():
    if importlib.util.find_spec("xformers") is not None:
        pytest.skip("xformers is installed: no stand-in is made")
    try:
        peers._xformers_shim()
        import xformers.ops as xops

        q, k, v = (torch.randn(2, 40, 3, 8) for _ in range(3))  # (B, S, H, d)
        for causal in (False, True):
            bias = xops.LowerTriangularMask() if causal else None
            out = xops.memory_efficient_attention(q, k, v, attn_bias=bias)
            ref = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=causal)
            assert relative_error(out, ref.transpose(1, 2)) < 1e-6
        # a second case in the same worker looks the package up again: it must find the stand-in, not raise
        assert importlib.util.find_spec("xformers") is not None
        assert importlib.util.find_spec("xformers.ops") is not None
        peers._xformers_shim()
        assert sys.modules["xformers.ops"] is xops
    finally:
        sys.modules.pop("xformers.ops", None)
        sys.modules.pop("xformers", None)


OPTIONS = SimpleNamespace(
    window_size=16,
    approx_attn_dim=32,
    num_landmarks=16,
    proj_dim=32,
    bucket_size=16,
    n_hashes=2,
    segment_lengths=(64, 128),
    dilation_rates=(1, 2),
)


@pytest.mark.parametrize("peer", [p for p in peers.PEERS if p.package != "torch"], ids=lambda p: p.name)
def test_installed_peer_runs_on_bhnd_and_trains(peer):
    pytest.importorskip(peer.package)
    q, k, v = (torch.randn(1, 2, 256, 16, requires_grad=True) for _ in range(3))
    core, settings = peers.build_peer(peer, q, k, v, OPTIONS, False)
    out = core(q, k, v)
    assert out.shape == (1, 2, 256, 16) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    assert settings  # the matched settings are reported


def test_local_attention_peer_computes_attnzoo_local():
    pytest.importorskip("local_attention")
    import attnzoo
    from attnzoo.ops.local import local_attention

    q, k, v = (torch.randn(1, 2, 256, 16) for _ in range(3))
    core, _ = peers.build_peer(peers.PEERS[2], q, k, v, attnzoo.options("local")(window_size=16), False)
    assert relative_error(core(q, k, v), local_attention(q, k, v, window_size=16)) < 1e-6
