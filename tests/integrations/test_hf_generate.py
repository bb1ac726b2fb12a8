"""HF ``generate()`` with the KV cache backed by attnzoo decode states (tiny random Llama, built offline)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, StaticCache  # noqa: E402

from attnzoo.integrations.hf import use_attnzoo  # noqa: E402
from attnzoo.integrations.hf_cache import AttnzooCache, AttnzooLayer  # noqa: E402

CAUSAL = {
    "softmax": {},
    "local": dict(window_size=3),
    "dilated": dict(segment_lengths=(4, 8), dilation_rates=(1, 2)),
    "linear": {},
    "performer": dict(num_features=16),
    "none": {},
    "causal_eva": dict(window_size=4, chunk_size=2),
    "butterfly": dict(block_size=4),
}
PROMPT, NEW = 7, 4


def lm() -> LlamaForCausalLM:
    """Tiny random Llama (GQA); lm_head scaled so sampled tokens do not hinge on float rounding."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, attn_implementation="sdpa", pad_token_id=0,
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8)
    return model


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """ids (2, PROMPT) and attention_mask: row 1 left-padded by 3."""
    ids = torch.randint(3, 64, (2, PROMPT), generator=torch.Generator().manual_seed(1))
    am = torch.ones(2, PROMPT, dtype=torch.long)
    am[1, :3] = 0
    ids[1, :3] = 0
    return ids, am


def generate(model, use_cache: bool, sample: bool, **kw):
    ids, am = prompts()
    torch.manual_seed(3)
    return model.generate(
        ids, attention_mask=am, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=sample, use_cache=use_cache,
        return_dict_in_generate=True, **kw,
    )  # fmt: skip


SLOW = ("dilated", "none", "causal_eva", "butterfly")  # the same path with other states; -m slow runs them


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in CAUSAL]
)
def test_generate_with_the_cache_gives_the_tokens_of_no_cache(name):
    """Greedy and sampling (fixed seed), left-padded batch: cached tokens equal use_cache=False tokens; the
    default cache is an AttnzooCache whose layers hold the mechanism's decode state."""
    model = lm()
    use_attnzoo(model, name, **CAUSAL[name])
    for sample in (False, True):
        cached, plain = generate(model, True, sample), generate(model, False, sample)
        assert cached.sequences.shape == (2, PROMPT + NEW)
        assert torch.equal(cached.sequences, plain.sequences), (sample, cached.sequences, plain.sequences)
        assert isinstance(cached.past_key_values, AttnzooCache)
        layers = cached.past_key_values.layers
        assert len(layers) == 2 and all(isinstance(layer, AttnzooLayer) for layer in layers)
        assert [layer.length for layer in layers] == [PROMPT + NEW - 1] * 2  # the last token is never fed back
        assert layers[0].state.length == PROMPT + NEW - 1 and layers[0].state.batch_size == 2
    assert len(set(map(tuple, cached.sequences[:, PROMPT:].tolist()))) == 2  # the two rows differ: not vacuous


def test_the_model_called_step_by_step_with_an_attnzoo_cache_equals_one_forward():
    """Prompt then two single-token calls (and one two-token call) give the logits of one uncached forward."""
    model, (ids, am) = lm(), prompts()
    use_attnzoo(model, "performer", num_features=16)
    full_ids = torch.cat([ids, torch.tensor([[5, 6, 7], [8, 9, 10]])], 1)
    full_am = torch.cat([am, torch.ones(2, 3, dtype=torch.long)], 1)
    pos = (full_am.cumsum(1) - 1).clamp(min=0)  # positions from the mask, as generate() makes them
    ref = model(full_ids, attention_mask=full_am, position_ids=pos, use_cache=False).logits
    cache = AttnzooCache()
    out = [model(ids, attention_mask=am, position_ids=pos[:, :PROMPT], cache=cache).logits]
    out.append(model(full_ids[:, PROMPT : PROMPT + 1], attention_mask=full_am[:, : PROMPT + 1],
                     position_ids=pos[:, PROMPT : PROMPT + 1], cache=cache).logits)  # fmt: skip
    out.append(model(full_ids[:, PROMPT + 1 :], attention_mask=full_am, position_ids=pos[:, PROMPT + 1 :],
                     cache=cache).logits)  # fmt: skip
    got = torch.cat(out, 1)
    real = full_am.bool()
    assert torch.allclose(got[real], ref[real], atol=1e-5, rtol=0)
    assert cache.get_seq_length() == PROMPT + 3


def test_caches_attnzoo_does_not_hold_are_refused():
    model, (ids, am) = lm(), prompts()
    use_attnzoo(model, "softmax")
    cache = DynamicCache(config=model.config)
    model(ids, attention_mask=am, cache=cache)  # the prompt runs: nothing was cached before it
    step = torch.cat([am, am[:, :1]], 1)
    with pytest.raises(ValueError, match="decodes after 7 cached tokens from a cache attnzoo does not hold"):
        model(ids[:, :1], attention_mask=step, cache=cache)
    with pytest.raises(ValueError, match="kv_length=32, kv_offset=0: static and sliding-window HF caches"):
        generate(model, True, False, cache=StaticCache(config=model.config, max_cache_len=32))
    with pytest.raises(ValueError, match=r"cannot drop tokens \(crop\(2\)\)"):
        generate(model, True, False).past_key_values.crop(2)


def test_decoded_tokens_must_be_real():
    model, (ids, am) = lm(), prompts()
    use_attnzoo(model, "local", window_size=3)
    cache = AttnzooCache()
    model(ids, attention_mask=am, cache=cache)
    with pytest.raises(ValueError, match="tokens decoded after the prompt must be real"):
        model(ids[:, :1], attention_mask=torch.cat([am, torch.zeros(2, 1, dtype=torch.long)], 1), cache=cache)
