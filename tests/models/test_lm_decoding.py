"""Model-level decoding: ``CausalLM.prefill`` + ``step`` equal the full causal forward, for every causal mechanism."""

from __future__ import annotations

import pytest
import torch

import attnzoo
from attnzoo import tasks
from attnzoo.models import CausalLM, ModelConfig, SequenceClassifier, StackState
from attnzoo.testing import assert_close

CAUSAL = [spec.name for spec in attnzoo.available() if spec.capabilities.causal]
SMALL_OPTIONS = {  # mechanism options that make the sparse patterns non-trivial at N = 40
    "local": {"window_size": 4},
    "dilated": {"segment_lengths": (8, 16), "dilation_rates": (1, 2)},
    "butterfly": {"block_size": 4},  # layer 1 has stage 1: the causal model fixes max_seq_len to N
}
N = 40


def lm(name: str = "softmax", **cfg: object) -> CausalLM:
    torch.manual_seed(0)
    fields = dict(dim=32, num_heads=4, num_layers=2, mlp_dim=64, dropout=0.0, attention_dropout=0.0, causal=True)
    model_cfg = ModelConfig(attention=name, attention_options=SMALL_OPTIONS.get(name, {}), **{**fields, **cfg})
    return CausalLM(tasks.get("bytes-lm", seq_len=N), model_cfg).eval()


def decode(model: CausalLM, ids: torch.Tensor, prompt: int, mask: torch.Tensor | None = None):
    """Prefill ``ids[:, :prompt]`` then step through the rest: logits ``(B, N, C)`` and the last state."""
    with torch.no_grad():
        logits, state = model.prefill(ids[:, :prompt], None if mask is None else mask[:, :prompt])
        out = [logits]
        for t in range(prompt, ids.shape[1]):
            step_logits, state = model.step(ids[:, t : t + 1], state)
            out.append(step_logits)
    return torch.cat(out, 1), state


def forward(model: CausalLM, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model({"input_ids": ids, "mask": torch.ones_like(ids, dtype=torch.bool) if mask is None else mask})


def byte_ids(batch: int, n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, 257, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", CAUSAL)
@pytest.mark.parametrize("prompt", [1, 17])
def test_prefill_and_steps_equal_the_causal_forward(name: str, prompt: int) -> None:
    model = lm(name)
    ids = byte_ids(2, N)
    full = forward(model, ids)
    out, state = decode(model, ids, prompt)
    assert out.shape == full.shape == (2, N, 256)
    assert_close(f"{name} CausalLM decode (prompt {prompt})", full, out, 1e-5)
    assert isinstance(state, StackState) and state.length == N and len(state.layers) == 2
    assert state.memory_bytes() > 0


@pytest.mark.parametrize("name", CAUSAL)
def test_left_padded_prompts_in_float64(name: str) -> None:
    """Prompts of unequal length, left-padded: decoding equals the forward with the mask extended by True."""
    model = lm(name).double()
    ids = byte_ids(2, 30, seed=2)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, :6] = False
    out, _ = decode(model, ids, 11, mask)
    full = forward(model, ids, mask)
    assert_close(f"{name} CausalLM decode with padding", full * mask[..., None], out * mask[..., None], 1e-10)


@pytest.mark.parametrize(
    "cfg",
    [{"positions": "sinusoidal"}, {"positions": "none"}, {"norm": "post"}, {"num_layers": 3}],
    ids=["sinusoidal", "no-positions", "post-norm", "three-layers"],
)
def test_decoding_follows_the_architecture(cfg: dict) -> None:
    model = lm(**cfg)
    ids = byte_ids(3, N, seed=3)
    out, state = decode(model, ids, 5)
    assert_close(f"CausalLM decode {cfg}", forward(model, ids), out, 1e-5)
    assert len(state.layers) == cfg.get("num_layers", 2)


def test_state_selects_rows_for_beam_search() -> None:
    model = lm()
    ids = byte_ids(3, 20, seed=4)
    with torch.no_grad():
        _, state = model.prefill(ids[:, :12])
        picked = state.select(torch.tensor([2, 0, 2]))
        logits_picked, new = model.step(ids[[2, 0, 2], 12:13], picked)
        logits_all, _ = model.step(ids[:, 12:13], state)
    assert picked.length == state.length == 12 and new.length == 13
    assert_close("selected rows", logits_all[[2, 0, 2]], logits_picked, 1e-6)


def test_max_length_and_running_past_it() -> None:
    model = lm()
    assert model.encoder.max_length == N and lm(positions="none").encoder.max_length is None
    with torch.no_grad():
        _, state = model.prefill(byte_ids(1, N))
        with pytest.raises(ValueError, match=r"positions 40\.\.40 are past the end of the position table \(40\)"):
            model.step(byte_ids(1, 1), state)
        with pytest.raises(ValueError, match=r"sequence of 41 tokens is longer than the position table \(40\)"):
            model.prefill(byte_ids(1, N + 1))


def test_decoding_errors() -> None:
    with pytest.raises(ValueError, match=r"needs a causal model \(model.causal: true\)"):
        lm(causal=False).prefill(byte_ids(1, 4))
    spec = tasks.get("kv-lookup")
    classifier = SequenceClassifier(spec, ModelConfig(pooling="cls", causal=True))
    with pytest.raises(ValueError, match="no CLS token"):
        classifier.encoder.prefill(torch.ones(1, 4, dtype=torch.long))
    model = lm()
    with torch.no_grad():
        _, state = model.prefill(byte_ids(2, 4))
        with pytest.raises(ValueError, match=r"one token per sequence, inputs: \(B, 1\); got \(2, 2\)"):
            model.step(byte_ids(2, 2), state)
        with pytest.raises(TypeError, match="must be the StackState returned by prefill or step, got dict"):
            model.step(byte_ids(2, 1), {})  # type: ignore[arg-type]


def test_causal_model_fixes_butterfly_length() -> None:
    """A causal model sets butterfly's max_seq_len to its length (strides must not follow the decoded length);
    a non-causal one leaves the official default (strides from N)."""
    causal = lm("butterfly")
    assert [block.attn.options.max_seq_len for block in causal.encoder.blocks] == [N, N]
    assert [block.attn.options.stage for block in causal.encoder.blocks] == [0, 1]
    bidirectional = lm("butterfly", causal=False)
    assert [block.attn.options.max_seq_len for block in bidirectional.encoder.blocks] == [None, None]
