"""HF sliding-window models (Mistral, Qwen2 with alternating layer_types) mapped onto ``local`` from their config."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import MistralConfig, MistralForCausalLM, MistralModel, Qwen2Config, Qwen2Model  # noqa: E402

from attnzoo.integrations.hf import use_attnzoo  # noqa: E402

N = 12
COMMON = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, attn_implementation="sdpa",
)  # fmt: skip


def mistral(cls=MistralModel):
    torch.manual_seed(0)
    return cls(MistralConfig(sliding_window=4, pad_token_id=0, **COMMON)).eval()


def qwen2():
    torch.manual_seed(0)
    types = ["sliding_attention", "full_attention"]
    return Qwen2Model(Qwen2Config(sliding_window=3, use_sliding_window=True, layer_types=types, **COMMON)).eval()


def inputs():
    ids = torch.randint(0, 64, (2, N), generator=torch.Generator().manual_seed(1))
    am = torch.ones(2, N, dtype=torch.long)
    am[1, :4] = 0
    return ids, am, am.bool()


@pytest.mark.parametrize("make", [mistral, qwen2], ids=["mistral", "qwen2-alternating"])
def test_local_takes_each_layers_window_from_the_config_and_equals_sdpa(make):
    """HF's causal window W (keys i - W < j <= i) is local's window_size W - 1; Qwen2's full layer runs softmax."""
    model, (ids, am, real) = make(), inputs()
    ref = model(ids, attention_mask=am, use_cache=False).last_hidden_state
    use_attnzoo(model, "local")
    out = model(ids, attention_mask=am, use_cache=False).last_hidden_state
    assert torch.allclose(out[real], ref[real], atol=1e-5, rtol=0)
    model.set_attn_implementation("sdpa")
    model.config.sliding_window = None
    if make is mistral:  # the window changes the output, so the equality above is not vacuous
        full = model(ids, attention_mask=am, use_cache=False).last_hidden_state
        assert (full[real] - ref[real]).abs().max() > 1e-2


def test_a_window_option_must_match_and_other_mechanisms_are_refused():
    ids, am, _ = inputs()
    model = mistral()
    use_attnzoo(model, "local", window_size=4)  # W = 4 is window_size 3: off by one
    with pytest.raises(ValueError, match=r"window_size=4 differs from the model's sliding window 4 \(window_size=3"):
        model(ids, attention_mask=am, use_cache=False)
    use_attnzoo(model, "local", window_size=3)
    assert model(ids, attention_mask=am, use_cache=False).last_hidden_state.shape == (2, N, 32)
    use_attnzoo(model, "linear")
    with pytest.raises(ValueError, match="'linear' cannot honour the model's sliding window 4; 'local' maps it"):
        model(ids, attention_mask=am, use_cache=False)


def test_generate_on_a_sliding_window_model_with_the_cache_equals_no_cache():
    model, (ids, am, _) = mistral(MistralForCausalLM), inputs()
    ids[1, :4] = 0
    use_attnzoo(model, "local")
    out = [
        model.generate(ids, attention_mask=am, max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=c)
        for c in (True, False)
    ]
    assert torch.equal(out[0], out[1])
