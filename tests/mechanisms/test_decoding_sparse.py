"""Decoding of the sparse causal mechanisms (local, dilated, butterfly, none): bounded states, boundaries, refusals."""

import math

import pytest
import torch

import attnzoo
from attnzoo.mechanisms.none import NoneState
from attnzoo.ops.butterfly import butterfly_attention, naive_butterfly_attention
from attnzoo.sparse.step import step_attention
from attnzoo.testing import assert_close

DIM, HEADS = 32, 4


def build(name, **options):
    torch.manual_seed(0)
    return attnzoo.build(name, DIM, HEADS, causal=True, **options).double().eval()


def tokens(n, batch=2, seed=1, dtype=torch.float64):
    return torch.randn(batch, n, DIM, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def decode(module, x, prompt, mask=None):
    """Prefill ``x[:, :prompt]``, step through the rest: outputs ``(B, N, dim)`` and every state after a step."""
    with torch.no_grad():
        y, state = module.prefill(x[:, :prompt], None if mask is None else mask[:, :prompt])
        outs, states = [y], [state]
        for t in range(prompt, x.shape[1]):
            y_t, state = module.step(x[:, t : t + 1], state)
            outs.append(y_t)
            states.append(state)
    return torch.cat(outs, 1), states


def check_decode(module, n=40, prompts=(0, 9, 10, 11), mask=None):
    x = tokens(n)
    with torch.no_grad():
        full = module(x, mask)
    for prompt in prompts:
        out, _ = decode(module, x, prompt, mask)
        assert_close(f"decode (prompt {prompt})", full, out, 1e-12)


@pytest.mark.parametrize(
    "options",
    [
        dict(window_size=4),
        dict(window_size=4, look_back=7, use_rpe=True),
        dict(window_size=4, look_back=0),
        dict(window_size=5, mode="blockwise"),
        dict(window_size=5, mode="blockwise", overlap_window=True, use_rpe=True),
    ],
    ids=["sliding", "look_back_rpe", "self_only", "blockwise", "blockwise_overlap_rpe"],
)
def test_local_decoding_equals_the_forward_across_block_boundaries(options):
    """Prompts that end just before, at and after a block boundary (w = 5: 9, 10, 11) and left padding."""
    module = build("local", **options)
    check_decode(module)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, :7] = False
    check_decode(module, prompts=(11,), mask=mask)


@pytest.mark.parametrize(
    ("options", "kept"),
    [
        (dict(window_size=4), lambda n: min(n, 4)),
        (dict(window_size=4, look_back=7), lambda n: min(n, 7)),
        (dict(window_size=5, mode="blockwise"), lambda n: n % 5),
        (dict(window_size=5, mode="blockwise", overlap_window=True), lambda n: min(n, n % 5 + 2)),
    ],
    ids=["sliding", "look_back", "blockwise", "blockwise_overlap"],
)
def test_local_state_holds_exactly_the_window(options, kept):
    """The cache holds the keys the next query may see, never more: memory is flat once the window fills."""
    module = build("local", **options)
    _, states = decode(module, tokens(40), 0)
    lengths = [state.k.shape[2] for state in states]
    assert lengths == [kept(n) for n in range(41)]
    per_token = 2 * DIM * 8 + 1  # k and v of every head in fp64, one bool of `real`
    assert [state.memory_bytes() for state in states] == [2 * per_token * kept(n) for n in range(41)]


def test_local_sliding_memory_is_constant_after_the_window_fills():
    module = build("local", window_size=6)
    _, states = decode(module, tokens(30, batch=1), 3)
    sizes = [state.memory_bytes() for state in states]
    assert sizes[:4] == [3 * 513, 4 * 513, 5 * 513, 6 * 513]  # prompt 3, then one token more per step
    assert set(sizes[3:]) == {6 * 513}


def test_local_2d_refuses_to_decode():
    module = build("local", window_size=2, attn_2d=True, image_height=4, image_width=4)
    with pytest.raises(ValueError, match="attn_2d=True has no token-by-token decoding"):
        module.prefill(tokens(16))


@pytest.mark.parametrize(
    "options",
    [
        dict(segment_lengths=(4, 16, 256), dilation_rates=(1, 2, 4)),
        dict(segment_lengths=(9, 12), dilation_rates=(1, 5), offset_rule="paper"),
        dict(segment_lengths=(6, 9), dilation_rates=(2, 3)),  # rows no branch covers are 0 in both
        dict(segment_lengths=(8, 64), dilation_rates=(1, 2), subln=True, detach_mixing=True),
    ],
    ids=["three_branches_long_segment", "paper_offsets", "uncovered_rows", "subln"],
)
def test_dilated_decoding_equals_the_forward(options):
    """Several branches, segments longer than the decoded length, w not a multiple of r, left padding."""
    module = build("dilated", **options)
    check_decode(module, prompts=(0, 1, 16, 17))
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[0, :3] = False
    check_decode(module, prompts=(5,), mask=mask)


def test_dilated_state_is_bounded_by_the_branches():
    """S = sum_i ceil(w_i / r_i) slots per head, from the first token on, whatever the length."""
    segments, rates = (4, 16, 256), (1, 2, 4)
    module = build("dilated", segment_lengths=segments, dilation_rates=rates)
    _, states = decode(module, tokens(50, batch=1), 2)
    slots = sum(math.ceil(w / r) for w, r in zip(segments, rates, strict=True))
    assert slots == 76 and states[-1].k.shape == (1, HEADS, slots, DIM // HEADS)
    expected = HEADS * slots * (2 * DIM // HEADS * 8 + 1)
    assert {state.memory_bytes() for state in states} == {expected}


def test_dilated_state_keeps_only_the_current_segment():
    """After 20 tokens, branch (8, 1) holds positions 16..19 and branch (16, 2) the kept ones of 16..19."""
    module = build("dilated", segment_lengths=(8, 16), dilation_rates=(1, 2))
    _, states = decode(module, tokens(20, batch=1), 20)
    valid = states[-1].valid[0]  # (H, 8 + 8)
    assert valid[:, :8].sum(1).tolist() == [4] * HEADS
    # torchscale offsets for H=4, r=2: heads 0, 1 keep even positions 16, 18; heads 2, 3 odd 17, 19
    assert valid[:, 8:].sum(1).tolist() == [2] * HEADS
    assert valid[:, 8:10].all() and not valid[:, 10:].any()


def test_dilated_sequence_parallel_refuses_to_decode():
    module = build("dilated", segment_lengths=(8,), dilation_rates=(1,), sequence_parallel=True)
    with pytest.raises(ValueError, match="sequence_parallel=True has no token-by-token decoding"):
        module.prefill(tokens(4))


@pytest.mark.parametrize(
    ("options", "span"),
    [
        (dict(block_size=4, stage=0), 4),
        (dict(block_size=4, stage=1, max_seq_len=64), 16),
        (dict(block_size=3, stage=2, max_seq_len=50), 27),
        (dict(block_size=4, stage=2, max_seq_len=45), 48),  # stride capped to ceil(48 / 4) = 12
        (dict(block_size=4, stage=2, max_seq_len=45, float_stage_count=True), 48),
    ],
    ids=["stage0", "stage1", "stage2_b3", "stage2_capped", "float_stage_count"],
)
def test_butterfly_decoding_equals_the_forward(options, span):
    module = build("butterfly", **options)
    check_decode(module, prompts=(0, 1, 16, 17))
    _, states = decode(module, tokens(40), 0)
    assert [state.k.shape[2] for state in states] == [n % span for n in range(41)]
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, :6] = False
    check_decode(module, prompts=(11,), mask=mask)


def test_butterfly_stage_above_zero_needs_max_seq_len():
    with pytest.raises(ValueError, match=r"butterfly stage=1 takes its stride from the sequence length.*max_seq_len"):
        build("butterfly", block_size=4, stage=1).prefill(tokens(3))
    module = build("butterfly", block_size=4, stage=1, max_seq_len=8)
    _, state = module.prefill(tokens(8))
    with pytest.raises(ValueError, match="max_seq_len=8 decodes at most 8 tokens"):
        module.step(tokens(1), state)
    with pytest.raises(ValueError, match="max_seq_len=8 got N=9 tokens"):
        module(tokens(9))
    with pytest.raises(ValueError, match="option max_seq_len must be >= 1"):
        attnzoo.build("butterfly", DIM, HEADS, max_seq_len=0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("n", "max_seq_len", "stage"), [(13, 40, 1), (33, 100, 2), (7, 64, 1), (40, 40, 1)])
def test_butterfly_max_seq_len_equals_right_padding_to_it(causal, n, max_seq_len, stage):
    """A fixed length means: the input right-padded to max_seq_len (masked); sparse == dense, outputs and grads."""
    gen = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(2, 2, n, 8, dtype=torch.float64, generator=gen, requires_grad=True) for _ in range(3))
    mask = torch.rand(2, n, generator=gen) > 0.2
    kwargs = dict(mask=mask, causal=causal, block_size=4, stage=stage, max_seq_len=max_seq_len)
    out = butterfly_attention(q, k, v, **kwargs)
    ref = naive_butterfly_attention(q, k, v, **kwargs)
    assert_close("butterfly max_seq_len", ref, out, 1e-12)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        assert_close(f"d{name}", r, g, 1e-12)
    pad = max_seq_len - n
    padded = [torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (q, k, v)]
    long_mask = torch.nn.functional.pad(mask, (0, pad))
    whole = butterfly_attention(*padded, mask=long_mask, causal=causal, block_size=4, stage=stage)
    assert_close("butterfly max_seq_len == padded", whole[:, :, :n], out, 1e-12)


def test_none_state_counts_real_tokens():
    module = build("none")
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, :4] = False
    check_decode(module, n=10, prompts=(4, 6), mask=mask)
    _, states = decode(module, tokens(10), 6, mask)
    assert isinstance(states[-1], NoneState) and states[-1].real_tokens.tolist() == [6, 10]
    assert [state.length for state in states] == list(range(6, 11))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("local", dict(window_size=4, use_rpe=True)),
        ("local", dict(window_size=5, mode="blockwise", overlap_window=True)),
        ("dilated", dict(segment_lengths=(8, 16), dilation_rates=(1, 2))),
        ("butterfly", dict(block_size=4, stage=1, max_seq_len=32)),
        ("none", {}),
    ],
)
def test_bf16_decodes(name, options):
    module = build(name, **options)
    x = tokens(24)
    with torch.no_grad():
        full = module(x)
    low = module.to(torch.bfloat16)
    out, states = decode(low, x.to(torch.bfloat16), 13)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert all(value.dtype != torch.float64 for value in states[-1].tensors().values())
    assert (out.double() - full).abs().max() < 0.05 * full.abs().max()


def test_wrong_state_type_is_refused():
    local, butterfly = build("local", window_size=4), build("butterfly", block_size=4)
    x = tokens(4)
    with torch.no_grad():
        _, state = butterfly.prefill(x)
        with pytest.raises(TypeError, match="local decodes from a WindowCache, got GroupCache"):
            local.step(x[:, :1], state)
        _, state = local.prefill(x)
        with pytest.raises(TypeError, match="butterfly decodes from a GroupCache, got WindowCache"):
            butterfly.step(x[:, :1], state)
        for name, options in (("dilated", dict(segment_lengths=(4,), dilation_rates=(1,))), ("none", {})):
            with pytest.raises(TypeError, match=f"{name} decodes from a"):
                build(name, **options).step(x[:, :1], state)


def test_step_attention_returns_zero_and_minus_inf_lse_without_keys():
    q, k, v = torch.randn(1, 2, 1, 4, dtype=torch.float64), *torch.randn(2, 1, 2, 3, 4, dtype=torch.float64)
    allowed = torch.tensor([[True, False, True], [False, False, False]])[None, :, None, :]
    bias = torch.randn(2, 1, 3, dtype=torch.float64)
    out, lse = step_attention(q, k, v, allowed, bias)
    scores = (q[0, 0] @ k[0, 0].T * 0.5 + bias[0])[0, [0, 2]]
    expected = torch.softmax(scores, -1) @ v[0, 0, [0, 2]]
    assert_close("step row 0", expected, out[0, 0, 0], 1e-12)
    assert torch.allclose(lse[0, 0, 0], torch.logsumexp(scores, -1))
    assert torch.equal(out[0, 1], torch.zeros(1, 4, dtype=torch.float64)) and lse[0, 1, 0] == float("-inf")


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("local", dict(window_size=4)),
        ("dilated", dict(segment_lengths=(8, 16), dilation_rates=(1, 2))),
        ("butterfly", dict(block_size=4)),
    ],
)
def test_training_mode_steps_apply_attention_dropout(name, options):
    """Dropout in a step is drawn from torch's generator: seeded steps repeat, other seeds and eval differ."""
    torch.manual_seed(0)
    module = attnzoo.build(name, DIM, HEADS, causal=True, dropout=0.5, **options).double().train()
    x = tokens(12)
    with torch.no_grad():
        _, state = module.prefill(x[:, :8])
        outs = []
        for seed in (1, 1, 2):
            torch.manual_seed(seed)
            outs.append(module.step(x[:, 8:9], state)[0])
        evaluated, _ = module.eval().step(x[:, 8:9], state)
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2]) and not torch.allclose(outs[0], evaluated)
