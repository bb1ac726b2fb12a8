"""The engine's fast paths (band views, dense fallback) against the dense masked softmax, with gradients."""

import pytest
import torch

import attnzoo
import attnzoo.sparse.band as band
import attnzoo.sparse.dense as dense
import attnzoo.sparse.engine as engine
import attnzoo.sparse.executors as executors
from attnzoo.ops.softmax import naive_softmax_attention
from attnzoo.sparse import blockwise_window, dilated_segments, sliding_window, sparse_attention
from attnzoo.sparse.band import find_band
from attnzoo.sparse.dense import DENSE_BYTES, prefer_dense, visited_share
from attnzoo.sparse.engine import _prepare
from attnzoo.sparse.kernels import KERNELS
from attnzoo.sparse.structured import butterfly_groups
from attnzoo.sparse.trace import note_scores, trace_engine
from attnzoo.testing import assert_close, make_qkv, random_padding_mask


@pytest.fixture
def calls(monkeypatch):
    """Counts of band-path forward/backward calls and dense-path calls."""
    seen = {"band_forward": 0, "band_backward": 0, "dense": 0, "grouped": 0}

    def spy(name, target):
        def wrapper(*args, **kwargs):
            seen[name] += 1
            return target(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(executors, "band_forward", spy("band_forward", executors.band_forward))
    monkeypatch.setattr(executors, "band_backward", spy("band_backward", executors.band_backward))
    monkeypatch.setattr(engine, "dense_attention", spy("dense", engine.dense_attention))
    monkeypatch.setattr(engine, "grouped_attention", spy("grouped", engine.grouped_attention))
    return seen


def reference(q, k, v, patterns, mask, causal):
    """Dense ``softmax(s QK^T + log M) V`` and its lse from the patterns' N x N masks (independent of the engine)."""
    n = q.shape[-2]
    count = sum(p.to_dense(causal=causal).double() for p in patterns)[None]
    keep = (count > 0) & (torch.ones(n, n, dtype=torch.bool).tril() if causal else True)
    if mask is not None:
        keep = keep & mask[:, None, None, :]
    out = naive_softmax_attention(q, k, v, mask=mask, attn_mask=count > 0, causal=causal, bias=count.log())
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + count.log()
    return out, torch.logsumexp(scores.masked_fill(~keep, float("-inf")), -1)


def check_against_reference(q, k, v, patterns, mask, causal, **kwargs):
    out, lse = sparse_attention(q, k, v, patterns, mask=mask, causal=causal, **kwargs)
    ref, ref_lse = reference(q, k, v, patterns if isinstance(patterns, list) else [patterns], mask, causal)
    assert_close("out", ref, out, 1e-10)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    finite = torch.isfinite(ref_lse)
    assert_close("lse", ref_lse[finite], lse[finite], 1e-10)
    g, w = torch.randn_like(out), torch.randn_like(lse).masked_fill(~finite, 0.0)
    loss = (out * g).sum() + (lse.masked_fill(~finite, 0.0) * w).sum()  # the lse gradient path too
    ref_loss = (ref * g).sum() + (ref_lse.masked_fill(~finite, 0.0) * w).sum()
    for name, a, b in zip(
        "qkv", torch.autograd.grad(ref_loss, (q, k, v)), torch.autograd.grad(loss, (q, k, v)), strict=True
    ):
        assert_close(f"d{name}", a, b, 1e-9)


@pytest.mark.parametrize(
    ("n", "before", "after", "bs", "causal", "padded"),
    [
        (200, 20, 7, 16, False, False),  # lo = -2, hi = 1, ragged last block
        (203, 33, 0, 16, True, False),  # causal sliding window
        (200, 20, 7, 16, True, False),  # causal with a look-ahead: its blocks dropped
        (250, 5, 50, 8, False, False),  # lopsided
        (256, 16, 16, 16, False, True),  # padding: only the clean run takes the band path
    ],
)
@pytest.mark.parametrize("one_block_per_call", [False, True], ids=["chunked", "block-by-block"])
def test_band_path_matches_dense_with_gradients(
    calls, n, before, after, bs, causal, padded, one_block_per_call, monkeypatch
):
    if one_block_per_call:  # the backward's window gradients added back across many kernel calls
        monkeypatch.setattr(band, "BACKWARD_CHUNK_BYTES", 1)
    q, k, v = make_qkv(2, 3, n, 8, seed=1)
    mask = None
    if padded:
        mask = torch.ones(2, n, dtype=torch.bool)
        mask[0, 200:] = False  # padding at the end of one row: blocks near it are not clean
    pattern = sliding_window(n, before, after, bs)
    check_against_reference(q, k, v, pattern, mask, causal, executor="gather", kernel="cpu_flash")
    assert calls["band_forward"] == 1 and calls["band_backward"] == 1


def test_band_covers_the_longest_clean_run():
    n, bs = 256, 16
    q, _, v = make_qkv(2, 2, n, 8, seed=0)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, 100:110] = False  # block 6 has padding
    run = _prepare(q, v, sliding_window(n, 16, 16, bs), mask, False, None)
    band = find_band(run.plan, KERNELS["cpu_flash"], None)
    assert band is not None
    # windows are blocks t-1..t+1: clean t in 1..4 and 8..14; the longer run is 8..14
    assert (band.start, band.stop, band.lo, band.span) == (8, 15, -1, 48)
    covered = sorted(b for start, stop in band.rest for b in range(start, stop))
    assert covered == [b for b in range(16) if not 8 <= b < 15]
    assert band.allowed.shape == (16, 48) and int(band.allowed.sum()) == sum(min(33, 16 + 16 + 1) for _ in range(16))


def test_band_path_not_taken_where_it_does_not_apply():
    n = 256
    q, _, v = make_qkv(1, 2, n, 8, seed=0)
    plan = _prepare(q, v, sliding_window(n, 16, 16, 16), None, False, None).plan
    assert find_band(plan, KERNELS["math"], None) is None  # the math kernel would materialise the windows
    assert find_band(plan, KERNELS["cpu_flash"], (0.1, 0)) is None  # dropout
    dilated = _prepare(q, v, dilated_segments(n, 64, 2, (0, 1)), None, False, None).plan
    assert find_band(dilated, KERNELS["cpu_flash"], None) is None  # no band declared
    wide = _prepare(q, v, sliding_window(n, 300, 300, 16), None, False, None).plan
    assert find_band(wide, KERNELS["cpu_flash"], None) is None  # the window is wider than the sequence


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("padded", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("union", [False, True], ids=["single", "union"])
def test_dense_fallback_matches_dense_with_gradients(calls, causal, padded, union):
    n = 64
    q, k, v = make_qkv(2, 3, n, 8, seed=1)
    mask = random_padding_mask(2, n, seed=3) if padded else None
    if padded:
        mask[1] = False  # a fully padded row: out 0, lse -inf
    if union:
        patterns = [dilated_segments(n, w, r, tuple(h % r for h in range(3))) for w, r in ((32, 1), (64, 2), (64, 4))]
    else:
        patterns = [sliding_window(n, 20, 7, 16)]
    check_against_reference(q, k, v, patterns, mask, causal)
    assert calls["dense"] == 1
    if padded:
        out, lse = sparse_attention(q, k, v, patterns, mask=mask, causal=causal)
        assert torch.equal(out[1], torch.zeros_like(out[1])) and bool(torch.isneginf(lse[1]).all())


def test_dense_fallback_causal_skips_the_upper_triangle(monkeypatch):
    """Causal with a bias (a union's multiplicities, padding), the dense call also sets the kernel's causal flag,
    so that the fused kernel skips the key tiles above the diagonal (measured: causal dilated at N = 2048
    557 -> 356 ms fwd+bwd); results stay those of the reference (the cases above)."""
    flags = []
    kernel = KERNELS["cpu_flash"]
    forward = kernel.forward

    def spy(q, k, v, bias, causal, *args):
        flags.append((bias is not None, causal))
        return forward(q, k, v, bias, causal, *args)

    monkeypatch.setattr(kernel, "forward", spy)
    n = 64
    q, k, v = make_qkv(1, 3, n, 8, seed=2)
    union = [dilated_segments(n, w, r, tuple(h % r for h in range(3))) for w, r in ((32, 1), (64, 2))]
    for causal in (False, True):
        sparse_attention(q, k, v, union, causal=causal)
    assert flags == [(True, False), (True, True)]


def test_dense_fallback_only_when_cheaper_and_small(calls):
    short, long = sliding_window(64, 20, 7, 16), sliding_window(4096, 20, 7, 16)
    assert visited_share([short]) == pytest.approx((2 + 3 + 4 + 3) * 16**2 / 64**2)  # blocks t-2 .. t+1, clipped
    assert prefer_dense([short], 1, False, 4)
    assert not prefer_dense([long], 1, False, 4)  # visits a small share of a long sequence
    n = int((DENSE_BYTES / 4) ** 0.5) + 16
    assert not prefer_dense([sliding_window(n, n, n, 16)], 1, False, 4)  # full coverage, but the mask is too big
    q, k, v = make_qkv(1, 2, 64, 8, seed=0)
    for kwargs in ({"executor": "gather"}, {"kernel": "math"}, {"dropout_p": 0.1}):
        sparse_attention(q, k, v, short, **kwargs)
    union = [dilated_segments(64, 32, 1, (0, 0)), dilated_segments(64, 64, 2, (0, 1))]
    sparse_attention(q, k, v, union, detach_weights=True)  # torchscale's detached mixture stays sparse
    assert calls["dense"] == 0
    sparse_attention(q, k, v, short)
    assert calls["dense"] == 1


def test_dense_fallback_plain_softmax_and_rows_without_keys(calls):
    """A window over the whole sequence needs no mask (plain softmax); rows no pattern covers give 0 / -inf."""
    q, k, v = make_qkv(2, 2, 48, 8, seed=6)
    out, _ = sparse_attention(q, k, v, sliding_window(48, 100, 100, 16))
    assert_close("out", naive_softmax_attention(q, k, v), out, 1e-12)
    check_against_reference(q, k, v, sliding_window(48, 100, 100, 16), None, True)  # the kernel's causal flag
    assert calls["dense"] == 2
    odd_rows = dilated_segments(48, 48, 2, (0, 1))  # head 0 keeps even tokens, head 1 odd ones
    thrice = [odd_rows] * 3  # visits 3/4 of the matrix: dense; every kept pair counts three times
    check_against_reference(q, k, v, thrice, None, False)
    out, lse = sparse_attention(q, k, v, thrice)
    assert torch.equal(out[:, 0, 1::2], torch.zeros_like(out[:, 0, 1::2]))
    assert bool(torch.isneginf(lse[:, 0, 1::2]).all())
    assert calls["dense"] == 4


def test_dense_masks_cache_stays_within_its_byte_budget(monkeypatch):
    """Cached multiplicity masks never hold more than CACHE_BYTES together; a mask over budget is not kept."""
    monkeypatch.setattr(dense, "_CACHE", {})
    q, k, v = make_qkv(1, 2, 32, 8, seed=3)
    monkeypatch.setattr(dense, "CACHE_BYTES", 3 * 2 * 32 * 32 * q.element_size())  # three (Hp=2, 32, 32) masks
    for step in range(5):
        patterns = [dilated_segments(32, 32, 2, (0, 1))] * (3 + step)  # a new union, hence a new mask, each time
        check_against_reference(q, k, v, patterns, None, step % 2 == 1)
        held = sum(0 if bias is None else bias.numel() * bias.element_size() for _, bias, _ in dense._CACHE.values())
        assert 0 < held <= dense.CACHE_BYTES
    assert len(dense._CACHE) == 3
    monkeypatch.setattr(dense, "CACHE_BYTES", 100)
    check_against_reference(q, k, v, [dilated_segments(32, 32, 2, (0, 1))] * 9, None, False)
    assert len(dense._CACHE) == 0


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("n", "stage", "stride"), [(64, 0, 1), (64, 1, 4), (48, 1, 4), (64, 2, 16)])
def test_grouped_path_runs_butterfly_groups_exactly(calls, n, stage, stride, causal):
    """Groups of b tokens at stride s run as one batched call on the sequence's view: same outputs, lse and
    gradients as the dense masked softmax over the pattern's N x N mask."""
    pattern = butterfly_groups(n, 4, stage)
    assert pattern.groups == (4, stride)
    q, k, v = make_qkv(2, 3, n, 8, seed=stage)
    check_against_reference(q, k, v, pattern, None, causal)
    assert calls["grouped"] == 1


@pytest.mark.parametrize("stage", [0, 1])
def test_grouped_path_with_a_padding_mask(calls, stage):
    """Padded keys are skipped per group; a group of padding only gives 0 and lse -inf (a fully padded
    sequence, and the padded tail of a short one at stride 1)."""
    q, k, v = make_qkv(3, 2, 48, 8, seed=4)
    mask = torch.ones(3, 48, dtype=torch.bool)
    mask[0, 37:] = False
    mask[1] = False
    mask[2, ::3] = False
    check_against_reference(q, k, v, butterfly_groups(48, 4, stage), mask, False)
    assert calls["grouped"] == 1
    out, lse = sparse_attention(q, k, v, butterfly_groups(48, 4, stage), mask=mask)
    assert torch.equal(out[1], torch.zeros_like(out[1])) and bool(torch.isneginf(lse[1]).all())


def test_grouped_path_not_taken_with_empty_slots_causal_padding_or_an_executor(calls):
    q, k, v = make_qkv(2, 2, 50, 8, seed=1)
    ragged = butterfly_groups(50, 4, 1)  # 50 tokens in 64 slots
    assert ragged.groups is None
    check_against_reference(q, k, v, ragged, None, False)
    full = butterfly_groups(48, 4, 1)
    q, k, v = make_qkv(2, 2, 48, 8, seed=2)
    check_against_reference(q, k, v, full, random_padding_mask(2, 48, seed=0), True)
    check_against_reference(q, k, v, full, None, False, executor="gather")
    assert calls["grouped"] == 0
    with pytest.raises(ValueError, match="a padding mask or causal, not both"):
        dense.grouped_attention(q, k, v, (4, 4), True, 1.0, KERNELS["cpu_flash"], torch.ones(2, 48, dtype=torch.bool))


@pytest.mark.parametrize("causal", [False, True])
def test_grouped_path_runs_disjoint_blockwise_windows(calls, causal):
    """efficient-attention's blockwise windows without extension are groups of w tokens (EVA's local part)."""
    assert blockwise_window(48, 12).groups == (12, 1)
    assert blockwise_window(50, 12).groups is None and blockwise_window(48, 12, 2).groups is None
    q, k, v = make_qkv(2, 3, 48, 8, seed=5)
    check_against_reference(q, k, v, blockwise_window(48, 12), None, causal)
    assert calls["grouped"] == 1


def test_grouped_path_by_chunks_of_groups(calls, monkeypatch):
    """Groups run in chunks of rows (one group each here): same outputs, lse and gradients."""
    monkeypatch.setattr(dense, "GROUP_CHUNK_BYTES", 1)
    q, k, v = make_qkv(2, 3, 64, 8, seed=7)
    check_against_reference(q, k, v, butterfly_groups(64, 4, 1), None, True)
    check_against_reference(q, k, v, butterfly_groups(64, 4, 1), random_padding_mask(2, 64, seed=1), False)
    assert calls["grouped"] == 2
    assert len(dense._row_chunks(torch.zeros(1, 2 * 3 * 16, 4, 8))) == 2 * 3 * 16


def _engine_run(q, k, v, patterns, **kwargs):
    """``(out, lse, trace)`` of one :func:`sparse_attention` call."""
    with trace_engine() as trace:
        out, lse = sparse_attention(q, k, v, patterns, **kwargs)
    return out, lse, trace


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize(
    "case", ["window-covers-all", "window-partial", "union"], ids=["covers-all", "partial", "union"]
)
def test_fused_dense_matches_dense_with_gradients(causal, case):
    """Without a padding mask and with the lse dropped, short sequences run as one fused kernel call with torch's
    own backward (SDPA's path for softmax); out and gradients equal the reference's."""
    n = 64
    q, k, v = make_qkv(2, 3, n, 8, seed=4)
    patterns = {
        "window-covers-all": [sliding_window(n, 100, 100, 16)],
        "window-partial": [sliding_window(n, 20, 7, 16)],
        "union": [dilated_segments(n, w, r, tuple(h % r for h in range(3))) for w, r in ((32, 1), (64, 2), (64, 4))],
    }[case]
    out, lse, trace = _engine_run(q, k, v, patterns, causal=causal, need_lse=False)
    assert trace.paths == ["fused-dense"] and lse is None
    ref, _ = reference(q, k, v, patterns, None, causal)
    assert_close("out", ref, out, 1e-10)
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), (q, k, v))
    for name, a, b in zip("qkv", torch.autograd.grad((ref * g).sum(), (q, k, v)), grads, strict=True):
        assert_close(f"d{name}", a, b, 1e-9)
    assert trace.score_entries == 2 * 3 * (n * (n + 1) // 2 if causal else n * n)


def test_fused_dense_only_where_it_gives_the_same_result():
    """A padding mask, rows without keys, a wanted lse, a detached mixture, another executor or kernel, dropout
    and long sequences keep their own paths."""
    n = 48
    q, k, v = make_qkv(2, 2, n, 8, seed=6)
    window = sliding_window(n, 20, 7, 16)
    odd_rows = [dilated_segments(n, n, 2, (0, 1))] * 3  # dense by share, but half the rows see no key
    union = [dilated_segments(n, 32, 1, (0, 0)), dilated_segments(n, 48, 2, (0, 1))]
    mask = random_padding_mask(2, n, seed=1)
    assert _engine_run(q, k, v, window, need_lse=False)[2].paths == ["fused-dense"]
    cases = [
        (window, {"mask": mask}, "dense-fallback"),
        (odd_rows, {}, "dense-fallback"),
        (window, {"need_lse": True}, "dense-fallback"),
        (union, {"detach_weights": True}, "gather"),
        (window, {"executor": "gather"}, "gather"),
        (window, {"kernel": "math"}, "gather"),
        (window, {"dropout_p": 0.1}, "gather"),
    ]
    for patterns, kwargs, expected in cases:
        out, _, trace = _engine_run(q, k, v, patterns, **{"need_lse": False, **kwargs})
        assert trace.label() == expected, kwargs
        ref, _ = reference(q, k, v, patterns if isinstance(patterns, list) else [patterns], kwargs.get("mask"), False)
        if "dropout_p" not in kwargs:
            assert_close("out", ref, out, 1e-10)
    long = sliding_window(4096, 20, 7, 16)
    ql, kl, vl = make_qkv(1, 1, 4096, 8, seed=0)
    assert _engine_run(ql, kl, vl, long, need_lse=False)[2].label() == "gather+band"


@pytest.mark.parametrize(
    ("mechanism", "options", "n", "expected"),
    [
        ("local", {"window_size": 256}, 256, "fused-dense"),
        ("local", {"window_size": 256}, 512, "fused-dense"),  # causal: visits 0.56 of the matrix, dense does 0.5
        ("local", {"window_size": 16}, 1024, "gather+band"),
        ("dilated", {"segment_lengths": (2048, 4096, 8192), "dilation_rates": (1, 2, 4)}, 512, "fused-dense"),
        ("butterfly", {}, 256, "grouped"),
    ],
)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_mechanisms_at_short_lengths_take_the_fused_paths(mechanism, options, n, expected, causal):
    """local, dilated and butterfly reach the engine's one-call paths at short N (issue 29's short sequences)."""
    module = attnzoo.build(mechanism, 32, 2, causal=causal, **options)
    x = torch.randn(1, n, 32)
    with torch.no_grad(), trace_engine() as trace:
        module(x)
    assert trace.label() == expected


def test_score_entries_of_kernel_calls():
    """Entries of one kernel call: all of them, or the top-left causal triangle (rows past the keys see all)."""
    for (m, s, causal), entries in {
        (4, 4, False): 16,
        (4, 4, True): 10,
        (6, 4, True): 10 + 8,
        (4, 6, True): 10,
    }.items():
        with trace_engine() as trace:
            note_scores(3, m, s, causal)
        assert trace.score_entries == 3 * entries
    note_scores(1, 4, 4, False)  # outside a trace: nothing recorded, nothing raised
    q, k, v = make_qkv(1, 2, 256, 8, seed=0)
    pattern = sliding_window(256, 16, 16, 16)
    _, _, trace = _engine_run(q, k, v, pattern, executor="gather")
    visited = int(pattern.layout.kv_valid.sum()) * 16 * 16  # each query block against its visited key blocks
    assert trace.paths == ["gather", "band"] and trace.score_entries == 2 * visited


def test_causal_window_as_long_as_the_sequence_needs_no_bias():
    """A causal window covering every earlier key is causal softmax: the kernel's causal flag alone, no N x N bias
    (the bias cost causal local 1.2-1.3x causal softmax at N = 128-256); a causal union keeps its bias."""
    cpu = torch.device("cpu")
    assert dense._unmasked_plan([sliding_window(128, 256, 0, 64)], True, torch.float32, cpu) == (True, True)
    assert dense._unmasked_plan([sliding_window(128, 100, 0, 64)], True, torch.float32, cpu) == (True, False)
    union = [dilated_segments(128, w, r, (0, 0)) for w, r in ((128, 1), (128, 2))]
    assert dense._unmasked_plan(union, True, torch.float32, cpu) == (True, False)
    q, k, v = make_qkv(1, 2, 128, 8, seed=5)
    out, _, trace = _engine_run(q, k, v, sliding_window(128, 256, 0, 64), causal=True, need_lse=False)
    assert trace.paths == ["fused-dense"]
    assert_close("out", naive_softmax_attention(q, k, v, causal=True), out, 1e-10)
