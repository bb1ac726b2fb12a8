"""HF adapter: a mechanism per layer, and the choice saved with save_pretrained and restored after from_pretrained."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import LlamaConfig, LlamaModel  # noqa: E402

from attnzoo.integrations.hf import use_attnzoo  # noqa: E402

DILATED = {"name": "dilated", "segment_lengths": (4, 8), "dilation_rates": (1, 2)}


def llama() -> LlamaModel:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, attn_implementation="sdpa",
    )  # fmt: skip
    return LlamaModel(cfg).eval()


IDS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))


def run(model) -> torch.Tensor:
    return model(IDS, use_cache=False).last_hidden_state


def test_a_mechanism_per_layer_from_ranges_or_a_callable():
    model = llama()
    use_attnzoo(model, {"0-1": DILATED, "2-3": "softmax"})
    mixed = run(model)
    assert model.config.attnzoo == {"layers": [DILATED, DILATED, {"name": "softmax"}, {"name": "softmax"}]}
    use_attnzoo(model, lambda i: DILATED if i < 2 else "softmax")
    assert torch.equal(run(model), mixed)
    use_attnzoo(model, "softmax")
    all_softmax = run(model)
    use_attnzoo(model, "dilated", segment_lengths=(4, 8), dilation_rates=(1, 2))
    all_dilated = run(model)
    use_attnzoo(model, {"0-1": "softmax", "2-3": DILATED})
    swapped = run(model)
    for other in (all_softmax, all_dilated, swapped):  # each layer ran its own choice
        assert (mixed - other).abs().max() > 1e-3


def test_save_pretrained_records_the_choice_and_use_attnzoo_restores_it(tmp_path):
    model = llama()
    use_attnzoo(model, {"0-1": DILATED, "2-3": "softmax"})
    ref = run(model)
    model.save_pretrained(tmp_path)
    loaded = LlamaModel.from_pretrained(tmp_path).eval()
    assert loaded.config._attn_implementation == "sdpa"  # HF alone does not bring attnzoo back
    assert (run(loaded) - ref).abs().max() > 1e-3
    use_attnzoo(loaded)
    assert loaded.config._attn_implementation.startswith("attnzoo-layers-")
    assert torch.allclose(run(loaded), ref, atol=1e-6, rtol=0)


def test_bad_per_layer_choices_are_refused():
    model = llama()
    with pytest.raises(ValueError, match=r"layers \[2, 3\] of 4 have no mechanism"):
        use_attnzoo(model, {"0-1": "softmax"})
    with pytest.raises(ValueError, match="layer 1 is chosen twice"):
        use_attnzoo(model, {"0-1": "softmax", "1-3": "local"})
    with pytest.raises(ValueError, match="layer key '2-9' is outside layers 0-3"):
        use_attnzoo(model, {"0-1": "softmax", "2-9": "local"})
    with pytest.raises(ValueError, match="layer key 'x' is not 'a' or 'a-b'"):
        use_attnzoo(model, {"x": "softmax"})
    with pytest.raises(ValueError, match="'nystrom' cannot be causal, but LlamaAttention is causal"):
        use_attnzoo(model, {"0-2": "softmax", "3": "nystrom"})
    with pytest.raises(ValueError, match="give each layer's options as"):
        use_attnzoo(model, {"0-3": "local"}, window_size=3)
    with pytest.raises(ValueError, match="this model's config holds none"):
        use_attnzoo(llama())
