"""Decoding of the recurrent mechanisms (performer, linear: running sums) and causal EVA (chunk summaries)."""

import pytest
import torch

import attnzoo
from attnzoo.mechanisms.recurrent import FeatureState
from attnzoo.ops.eva.causal import causal_eva_segments
from attnzoo.ops.eva.decode import ChunkState
from attnzoo.ops.eva.sparse import chunk_summaries
from attnzoo.testing import assert_close

from .test_decoding import decode_all
from .test_registry import DIM, HEADS


def build(name, dtype=torch.float64, **options):
    torch.manual_seed(0)
    return attnzoo.build(name, DIM, HEADS, causal=True, **options).to(dtype).eval()


def inputs(n, seed, dtype=torch.float64, scale=1.0):
    return scale * torch.randn(2, n, DIM, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("name", "width"), [("performer", 16), ("linear", DIM // HEADS)])
def test_recurrent_state_size_is_constant_in_the_decoded_tokens(name, width):
    module = build(name, **({"num_features": 16} if name == "performer" else {}))
    x = inputs(40, 4)
    sizes = []
    with torch.no_grad():
        _, state = module.prefill(x[:, :3])
        for t in range(3, 40):
            _, state = module.step(x[:, t : t + 1], state)
            sizes.append(state.memory_bytes())
    assert isinstance(state, FeatureState) and state.length == 40
    assert state.kv.shape == (2, HEADS, width, DIM // HEADS) and state.z.shape == (2, HEADS, width)
    assert (state.frame is None) == (name == "linear")
    # kv, z (and the (B, H, 1, 1) frame) in fp64: the same bytes after 1 and after 37 decoded tokens
    frame = 0 if name == "linear" else 2 * HEADS * 8
    assert set(sizes) == {2 * HEADS * width * (DIM // HEADS + 1) * 8 + frame}


def test_performer_stabiliser_leaks_nothing_and_decoding_matches_large_logits():
    """The causal forward stabilises each key by its own largest log-feature and each row in the frame of the
    keys it may see, so a dominant later token (log-features far above the others': fp32 underflow) moves no
    earlier row, and decoding equals the forward in fp32. Before (one key stabiliser per 128-token chunk, later
    keys included) the earlier keys' features underflowed to 0 and decoding disagreed with the forward."""
    module = build("performer", dtype=torch.float32, num_features=32)
    x = inputs(30, 5, dtype=torch.float32)
    y = x.clone()
    y[:, 20] *= 40.0  # one later token whose key dominates every feature of the chunk
    with torch.no_grad():
        assert torch.equal(module(x)[:, :20], module(y)[:, :20])
        ref = module.double()(y.double())
        module.float()
        for prompt_len in (0, 13, 25):
            out, state = decode_all(module, y, prompt_len)
            assert_close(f"decode, prompt {prompt_len}", module(y), out, 1e-6)
            assert_close(f"decode vs fp64, prompt {prompt_len}", ref, out, 1e-6)
            assert torch.isfinite(state.frame).all()


EVA_VARIANTS = [
    {},
    {"overlap_window": True},
    {"window_size": 6, "chunk_size": 2, "use_t5_rpe": True},
    {"window_size": 4, "chunk_size": 2, "overlap_window": True, "use_t5_rpe": True, "adaptive_proj": "no-ln"},
    {"compat": True, "chunk_size": 2},
    {"compat": True, "overlap_window": True, "use_t5_rpe": True},
]


@pytest.mark.parametrize("options", EVA_VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("prompt_len", [0, 9])
def test_causal_eva_variants_decode_as_the_forward(options, prompt_len):
    module = build("causal_eva", **options)
    if module.rel_pos_bias is not None:
        torch.nn.init.normal_(module.rel_pos_bias.weight, generator=torch.Generator().manual_seed(6))
    x = inputs(37, 7)
    mask = torch.ones(2, 37, dtype=torch.bool)
    mask[1, :7] = prompt_len == 0  # prompt 9: left padding across whole and partial chunks
    with torch.no_grad():
        out, state = decode_all(module, x, prompt_len, mask)
    assert_close(f"causal_eva {options} decode", module(x, mask), out, 1e-10)
    w = options.get("window_size", 4)
    e = w if options.get("overlap_window") else 0
    assert isinstance(state, ChunkState) and state.k.shape[2] == 37 - max(0, 37 // w * w - e)
    assert state.k_hat.shape[2] == 37 // options.get("chunk_size", w)


def test_causal_eva_chunk_summaries_equal_the_forward():
    """Each chunk completed during decoding is summarised exactly as the forward summarises it."""
    module = build("causal_eva", window_size=4, chunk_size=2)
    x = inputs(24, 8)
    mask = torch.ones(2, 24, dtype=torch.bool)
    mask[0, :3] = False  # chunk 0 of row 0 is padding only: never attended; chunk 1 half real
    with torch.no_grad():
        _, state = decode_all(module, x, 5, mask)
        q, k, v = module.project(x)
        seg = causal_eva_segments(mask, 2, 24, 4, 2, False)
        k_hat, beta = chunk_summaries(q, k, v, seg, mask, module.chunk_keys, None, (DIM // HEADS) ** -0.5)
    assert state.k_hat.shape == state.beta.shape == (2, HEADS, 12, DIM // HEADS)
    assert_close("k_hat", k_hat, state.k_hat, 1e-12)
    assert_close("beta", beta, state.beta, 1e-12)
    assert state.seen.tolist() == [[False] + [True] * 11, [True] * 12]


@pytest.mark.parametrize("name", ["performer", "linear", "causal_eva"])
def test_bf16_decoding_is_finite_and_close_to_fp32(name):
    module = build(name, dtype=torch.float32)
    x = inputs(24, 9, dtype=torch.float32)
    with torch.no_grad():
        ref, _ = decode_all(module, x, 10)
        out, state = decode_all(module.to(torch.bfloat16), x.to(torch.bfloat16), 10)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert all(torch.isfinite(t.float()).all() for t in state.tensors().values() if t.is_floating_point())
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_decoding_refusals_name_the_reason():
    x = inputs(6, 10)
    performer = build("performer", redraw="step").train()
    with pytest.raises(ValueError, match="redraw='step' draws new features every training forward; decode in eval"):
        performer.prefill(x)
    with pytest.raises(ValueError, match=r"causal_eva decodes in eval\(\) only"):
        build("causal_eva").train().prefill(x)
    with pytest.raises(ValueError, match="num_chunks cannot decode: the chunk size follows the total length"):
        build("causal_eva", num_chunks=2).prefill(x)
    with pytest.raises(ValueError, match="causal linear needs compat='none'"):
        build("linear", compat="nystromformer-lra")
    _, feature_state = build("linear").prefill(x)
    with pytest.raises(TypeError, match="causal_eva decodes from a ChunkState, got FeatureState"):
        build("causal_eva").step(x[:, :1], feature_state)
    _, chunk_state = build("causal_eva").prefill(x)
    with pytest.raises(TypeError, match="this mechanism decodes from a FeatureState, got ChunkState"):
        build("performer").step(x[:, :1], chunk_state)


@pytest.mark.parametrize("name", ["performer", "linear", "causal_eva"])
def test_a_step_leaves_the_given_state_unchanged(name):
    module = build(name, **({"window_size": 4, "chunk_size": 2} if name == "causal_eva" else {}))
    x = inputs(8, 11)
    with torch.no_grad():
        _, state = module.prefill(x[:, :5])  # the step completes chunk 2 of causal_eva
        before = {key: value.clone() for key, value in state.tensors().items()}
        first, _ = module.step(x[:, 5:6], state)
        again, _ = module.step(x[:, 5:6], state)
    assert state.length == 5 and all(torch.equal(before[key], value) for key, value in state.tensors().items())
    assert torch.equal(first, again)
