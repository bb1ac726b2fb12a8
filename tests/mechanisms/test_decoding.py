"""Token-by-token decoding for every causal mechanism (driven by the registry): prefill + steps == forward."""

import pytest
import torch

import attnzoo
from attnzoo.mechanisms.decoding import DecodeState
from attnzoo.testing import assert_close

from .test_registry import DIM, build

CAUSAL = [spec.name for spec in attnzoo.available() if spec.capabilities.causal]
NON_CAUSAL = [spec.name for spec in attnzoo.available() if spec.capabilities.bidirectional][:1]
# butterfly at stage > 0 takes its stride from the length: decoding fixes it with max_seq_len
DECODE_OPTIONS = {"butterfly": dict(max_seq_len=64)}


def decode_all(module, x, prompt_len, mask=None):
    """Prefill ``x[:, :prompt_len]`` then step through the rest; returns the concatenated outputs."""
    y, state = module.prefill(x[:, :prompt_len], None if mask is None else mask[:, :prompt_len])
    outs = [y]
    for t in range(prompt_len, x.shape[1]):
        y_t, state = module.step(x[:, t : t + 1], state)
        outs.append(y_t)
    return torch.cat(outs, 1), state


@pytest.mark.parametrize("name", CAUSAL)
@pytest.mark.parametrize("prompt_len", [0, 1, 13])
def test_prefill_and_steps_equal_the_causal_forward(name, prompt_len):
    module = build(name, causal=True, **DECODE_OPTIONS.get(name, {})).float()
    x = torch.randn(2, 40, DIM, generator=torch.Generator().manual_seed(1))
    full = module(x)
    with torch.no_grad():
        out, state = decode_all(module, x, prompt_len)
    assert_close(f"{name} decode (prompt {prompt_len})", full, out, 1e-5)
    assert state.length == 40 and state.batch_size == 2 and state.memory_bytes() > 0


@pytest.mark.parametrize("name", CAUSAL)
def test_left_padded_prompt(name):
    """Prompts of unequal length, left-padded: decoding equals the forward with the extended mask."""
    module = build(name, causal=True, **DECODE_OPTIONS.get(name, {}))
    x = torch.randn(2, 30, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, :5] = False
    full = module(x, mask)
    with torch.no_grad():
        out, _ = decode_all(module, x, 11, mask)
    assert_close(f"{name} decode with padding", full, out, 1e-10)


@pytest.mark.parametrize("name", CAUSAL)
def test_state_selects_and_reorders_batch_rows(name):
    module = build(name, causal=True, **DECODE_OPTIONS.get(name, {}))
    x = torch.randn(3, 20, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, state = module.prefill(x[:, :12])
        picked = state.select(torch.tensor([2, 0, 2]))
        y_picked, _ = module.step(x[[2, 0, 2], 12:13], picked)
        y_all, _ = module.step(x[:, 12:13], state)
    assert isinstance(picked, DecodeState) and picked.batch_size == 3
    assert_close(f"{name} reordered step", y_all[[2, 0, 2]], y_picked, 1e-12)


@pytest.mark.parametrize("name", CAUSAL)
def test_step_leaves_its_state_unchanged(name):
    """A state can be stepped twice (branching, speculative decoding): step returns a new one."""
    module = build(name, causal=True, **DECODE_OPTIONS.get(name, {}))
    x = torch.randn(2, 14, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _, state = module.prefill(x[:, :13])
        before = {key: value.clone() for key, value in state.tensors().items()}
        first, _ = module.step(x[:, 13:14], state)
        again, _ = module.step(x[:, 13:14], state)
    assert state.length == 13 and all(torch.equal(before[key], value) for key, value in state.tensors().items())
    assert torch.equal(first, again)


def test_decoding_errors_name_the_problem():
    module = build("softmax", causal=True)
    x = torch.randn(2, 5, DIM, dtype=torch.float64)
    _, state = module.prefill(x)
    with pytest.raises(ValueError, match="one token per sequence"):
        module.step(x[:, :2], state)
    with pytest.raises(ValueError, match="state holds 2 sequences but x has batch 1"):
        module.step(x[:1, :1], state)
    with pytest.raises(TypeError, match="state must be the DecodeState"):
        module.step(x[:, :1], None)
    with pytest.raises(ValueError, match="index must be a 1-D long tensor"):
        state.select(torch.tensor([0.0]))
    with pytest.raises(ValueError, match="decodes only when built with causal=True"):
        build("softmax").prefill(x)
