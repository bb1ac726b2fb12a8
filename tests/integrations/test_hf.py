"""HF transformers adapter: tiny random Llama (causal, GQA) and BERT (bidirectional) built offline."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel  # noqa: E402
from transformers.masking_utils import and_masks, causal_mask_function  # noqa: E402

import attnzoo  # noqa: E402
from attnzoo.integrations import hf  # noqa: E402
from attnzoo.integrations.hf import attnzoo_mask, make_attention_function, use_attnzoo  # noqa: E402

N = 12


def llama(**kw) -> LlamaModel:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, attn_implementation="sdpa", **kw,
    )  # fmt: skip
    return LlamaModel(cfg).eval()


def bert(**kw) -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, attn_implementation="sdpa", **kw,
    )  # fmt: skip
    return BertModel(cfg).eval()


def inputs(pad_left: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids (2, N), HF attention_mask (2, N) with row 1 padded by 4, and the real-token bool mask."""
    ids = torch.randint(0, 64, (2, N), generator=torch.Generator().manual_seed(1))
    real = torch.ones(2, N, dtype=torch.bool)
    real[1, :4] = not pad_left
    real[1, N - 4 :] = pad_left
    return ids, real.long(), real


def run(model, ids, attention_mask) -> torch.Tensor:
    return model(ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_softmax_equals_the_models_own_sdpa_with_padding(family):
    model, (ids, am, real) = (llama(), inputs(True)) if family == "llama" else (bert(), inputs(False))
    ref = run(model, ids, am)
    key = use_attnzoo(model, "softmax")
    assert model.config._attn_implementation == key
    out = run(model, ids, am)
    assert torch.allclose(out[real], ref[real], atol=1e-6, rtol=0)
    unmasked = run(model, ids, None)  # the padding mask matters here, so the check above is not vacuous
    assert (unmasked[1][real[1]] - ref[1][real[1]]).abs().max() > 1e-3
    model.set_attn_implementation("sdpa")
    assert torch.allclose(run(model, ids, None), unmasked, atol=1e-6, rtol=0)


def test_softmax_gradients_equal_sdpa_on_llama():
    model, (ids, am, real) = llama(), inputs(True)
    grads = []
    for impl in ("sdpa", "attnzoo"):
        if impl == "attnzoo":
            use_attnzoo(model, "softmax")
        model.zero_grad()
        run(model, ids, am)[real].square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[1], grads[0], atol=1e-5, rtol=1e-5)


def window_mask(real: torch.Tensor, w: int, causal: bool) -> torch.Tensor:
    """(B, 1, N, N) bool: |i - j| <= w (j <= i when causal), real keys only; pad rows see themselves."""
    i, j = torch.arange(N)[:, None], torch.arange(N)[None, :]
    allowed = (j >= i - w) & (j <= i + (0 if causal else w))
    return ((allowed & real[:, None, :]) | torch.eye(N, dtype=torch.bool))[:, None]


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_local_equals_a_masked_softmax_model_with_an_explicit_window(family):
    causal = family == "llama"
    model, (ids, am, real) = (llama(), inputs(True)) if causal else (bert(), inputs(False))
    ref = run(model, ids, window_mask(real, 3, causal))  # the model's own SDPA with a 4D window mask
    full = run(model, ids, am)
    use_attnzoo(model, "local", window_size=3)
    out = run(model, ids, am)
    assert torch.allclose(out[real], ref[real], atol=1e-5, rtol=0)
    assert (out[real] - full[real]).abs().max() > 1e-3  # the window changes the output


def test_a_mechanism_that_cannot_be_causal_is_refused_on_llama():
    with pytest.raises(ValueError, match="'nystrom' cannot be causal, but LlamaAttention is causal"):
        use_attnzoo(llama(), "nystrom")
    use_attnzoo(bert(), "nystrom", num_landmarks=4)  # fine where attention is bidirectional
    fn = make_attention_function("nystrom")
    q = torch.randn(1, 2, 8, 4)
    causal = attnzoo_mask(1, 8, 8, mask_function=causal_mask_function)
    with pytest.raises(ValueError, match="'nystrom' cannot be causal"):
        fn(torch.nn.Module(), q, q, q, causal)


def test_options_are_validated_and_module_only_options_refused():
    with pytest.raises(ValueError, match="window_size must be >= 1, got 0"):
        use_attnzoo(llama(), "local", window_size=0)
    with pytest.raises(ValueError, match=r"unknown option.*bogus"):
        use_attnzoo(llama(), "local", bogus=1)
    with pytest.raises(ValueError, match="option use_rpe=True of 'local' needs the mechanism module"):
        use_attnzoo(llama(), "local", use_rpe=True)


def test_masks_it_cannot_express_are_refused():
    model, (ids, am, real) = llama(), inputs(True)
    use_attnzoo(model, "softmax")
    with pytest.raises(ValueError, match=r"got a prepared attention mask \(2, 1, 12, 12\)"):
        run(model, ids, window_mask(real, 3, True))
    step = model(ids, attention_mask=am, use_cache=True)  # the prompt itself runs (empty cache, no offset)
    with pytest.raises(ValueError, match="decodes after 12 cached tokens from a cache attnzoo does not hold"):
        model(ids[:, :1], attention_mask=torch.cat([am, am[:, :1]], 1), cache=step.past_key_values)
    odd = and_masks(causal_mask_function, lambda b, h, q, kv: kv >= 0)
    with pytest.raises(ValueError, match="plain causal or bidirectional masks"):
        attnzoo_mask(2, N, N, mask_function=odd)


def test_scaling_dropout_and_extras_are_honoured_or_refused():
    q, k, v = (torch.randn(1, 2, 6, 4, generator=torch.Generator().manual_seed(s)) for s in range(3))
    plain = attnzoo_mask(1, 6, 6, mask_function=causal_mask_function)
    module = torch.nn.Module()
    soft = make_attention_function("softmax")
    out, weights = soft(module, q, k, v, plain, scaling=0.3)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3).transpose(1, 2)
    assert weights is None and torch.allclose(out, expected, atol=1e-6)
    lin = make_attention_function("linear")
    assert lin(module, q, k, v, plain, scaling=0.5)[0].shape == (1, 6, 2, 4)  # 0.5 = d**-0.5, the default
    with pytest.raises(ValueError, match=re.escape("'linear' has no scale option; the model asks for scaling=0.3")):
        lin(module, q, k, v, plain, scaling=0.3)
    with pytest.warns(UserWarning, match=re.escape("'linear' has no attention probabilities to drop; as in its")):
        undropped = lin(module, q, k, v, plain, dropout=0.1)[0]
    assert torch.equal(undropped, lin(module, q, k, v, plain)[0])
    with pytest.raises(ValueError, match="cannot honour the model's softcap"):
        soft(module, q, k, v, plain, softcap=30.0)
    with pytest.raises(ValueError, match="no attention weights"):
        soft(module, q, k, v, plain, output_attentions=True)
    torch.manual_seed(0)
    dropped = soft(module, q, k, v, plain, dropout=0.5)[0]
    assert not torch.allclose(dropped, expected)  # dropout reached the core


@pytest.mark.parametrize(("name", "options"), [("performer", {"num_features": 16}), ("nystrom", {"num_landmarks": 4})])
def test_fine_tuning_bert_with_attention_dropout(name, options):
    """BERT's default attention dropout 0.1 in train(): kernel/low-rank mechanisms apply none (their official
    codes have none) and warn; softmax drops probabilities."""
    model, (ids, am, real) = bert(hidden_dropout_prob=0.0), inputs(False)
    assert model.config.attention_probs_dropout_prob == 0.1
    use_attnzoo(model, name, **options)
    ref = run(model.eval(), ids, am)
    with pytest.warns(UserWarning, match=f"'{name}' has no attention probabilities to drop; as in its official code"):
        out = run(model.train(), ids, am)
    assert torch.allclose(out[real], ref[real], atol=1e-6, rtol=0)
    out[real].square().sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.encoder.parameters())
    use_attnzoo(model, "softmax")
    torch.manual_seed(0)
    assert (run(model.train(), ids, am) - run(model.eval(), ids, am))[real].abs().max() > 1e-3


def test_a_padding_mask_is_refused_for_a_mechanism_that_cannot_honour_it(monkeypatch):
    spec = attnzoo.get_spec("softmax")
    blind = dataclasses.replace(spec, capabilities=dataclasses.replace(spec.capabilities, key_padding_mask=False))
    monkeypatch.setattr(hf, "get_spec", lambda name: blind)
    fn = make_attention_function("softmax")
    q = torch.randn(2, 2, 6, 4)
    assert fn(torch.nn.Module(), q, q, q, attnzoo_mask(2, 6, 6))[0].shape == (2, 6, 2, 4)
    real = torch.ones(2, 6, dtype=torch.long)
    real[1, 4:] = 0
    with pytest.raises(ValueError, match="'softmax' cannot honour a padding mask"):
        fn(torch.nn.Module(), q, q, q, attnzoo_mask(2, 6, 6, attention_mask=real))


@pytest.mark.parametrize(
    ("name", "options"),
    [("nystrom", dict(num_landmarks=4)), ("performer", dict(num_features=16)), ("diffuser", dict(attention_window=4))],
)
def test_bert_trains_under_bf16_autocast(name, options):
    """The functional cores under autocast (bf16 q, k, v from the model's linears): output close to fp32,
    finite gradients in every parameter."""
    model, (ids, am, real) = bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), inputs(False)
    use_attnzoo(model, name, **options)
    ref = run(model, ids, am)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(model.train(), ids, am)
    out.float().square().sum().backward()
    error = (out.float() - ref)[real].norm() / ref[real].norm()  # 6.9e-5 (the residual stream dominates)
    assert error < 2.0**-12, f"relative error {error:.2e}"
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.encoder.parameters())


@pytest.mark.compile
def test_the_switched_model_compiles_fullgraph():
    """HFMask and the attention function trace without graph breaks (dynamo capture, eager backend)."""
    model, (ids, am, real) = llama(), inputs(True)
    use_attnzoo(model, "softmax")
    ref = run(model, ids, am)
    torch._dynamo.reset()
    out = run(torch.compile(model, fullgraph=True, backend="eager"), ids, am)
    torch._dynamo.reset()
    assert torch.allclose(out[real], ref[real], atol=1e-6, rtol=0)
