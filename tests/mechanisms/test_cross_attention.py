"""Cross-attention (``module(x, mask, context=..., context_mask=...)``), driven by the registry's flag."""

import pytest
import torch

import attnzoo
from attnzoo.testing import assert_close, make_qkv

from .test_registry import DIM, HEADS, build

CROSS = [spec.name for spec in attnzoo.available() if spec.capabilities.cross_attention]
NON_CROSS = [spec.name for spec in attnzoo.available() if not spec.capabilities.cross_attention]

# How each cross-capable module calls its registered dense reference (its parameters, options, query mask).
REFERENCE_ARGS = {
    "softmax": lambda m, mask: {},
    "performer": lambda m, mask: dict(
        projection=m.projection, kernel=m.options.kernel, feature_eps=m.options.feature_eps, compat=m.options.compat
    ),
    "linear": lambda m, mask: dict(compat=m.options.compat),
    "linformer": lambda m, mask: dict(e_proj=m.e_proj, f_proj=m.f_proj),
    "nystrom": lambda m, mask: dict(
        num_landmarks=m.options.num_landmarks, pinv_iterations=m.options.pinv_iterations, query_mask=mask
    ),
}
# Options that make the approximation act at these lengths (nystrom is exact with <= m queries or keys).
CROSS_OPTIONS = {"nystrom": dict(num_landmarks=3)}


def build_cross(name):
    return build(name, **CROSS_OPTIONS.get(name, {}))


def inputs(n=9, s=21, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, n, DIM, dtype=torch.float64, generator=gen, requires_grad=True)
    context = torch.randn(2, s, DIM, dtype=torch.float64, generator=gen, requires_grad=True)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, 6:] = False
    context_mask = torch.ones(2, s, dtype=torch.bool)
    context_mask[0, 15:] = False
    return x, context, mask, context_mask


def dense_cross(module, name, x, context, mask, context_mask):
    """The module's math written out: q rows of ``qkv`` on x, k and v rows on context, the dense reference."""
    w, b, h = module.qkv.weight, module.qkv.bias, HEADS

    def heads(t):
        return t.view(t.shape[0], t.shape[1], h, -1).transpose(1, 2)

    q = heads(x @ w[:DIM].T + b[:DIM])
    k = heads(context @ w[DIM : 2 * DIM].T + b[DIM : 2 * DIM])
    v = heads(context @ w[2 * DIM :].T + b[2 * DIM :])
    out = attnzoo.get_spec(name).reference(q, k, v, mask=context_mask, **REFERENCE_ARGS[name](module, mask))
    out = out * mask[:, None, :, None]
    return module.proj(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], DIM))


@pytest.mark.parametrize("name", CROSS)
@pytest.mark.parametrize("n, s", [(9, 21), (21, 9), (1, 1), (2, 21)])
def test_cross_attention_equals_dense_reference(name, n, s):
    module = build_cross(name)
    x, context, mask, context_mask = inputs(n, s)
    mask[1, min(6, n - 1) :] = False
    out = module(x, mask, context=context, context_mask=context_mask[:, :s])
    ref = dense_cross(module, name, x, context, mask, context_mask[:, :s])
    assert out.shape == (2, n, DIM)
    assert_close(f"{name} cross N={n} S={s}", ref, out, 1e-10)
    grads = torch.autograd.grad(out.square().sum(), (x, context))
    ref_grads = torch.autograd.grad(ref.square().sum(), (x, context))
    for label, g, r in zip(("x", "context"), grads, ref_grads, strict=True):
        assert_close(f"{name} d{label}", r, g, 1e-10)
    assert grads[1].abs().sum() > 0  # gradients reach the context


@pytest.mark.parametrize("name", CROSS)
def test_context_of_x_itself_is_self_attention(name):
    module = build_cross(name)
    x, _, mask, _ = inputs(n=12)
    assert_close(f"{name} context=x", module(x, mask), module(x, mask, context=x, context_mask=mask), 1e-12)


@pytest.mark.parametrize("name", CROSS)
def test_pad_keys_change_nothing_and_empty_context_gives_zero(name):
    module = build_cross(name)
    x, context, mask, context_mask = inputs()
    padded = torch.cat([context, 10 * torch.randn(2, 5, DIM, dtype=torch.float64)], 1)
    padded_mask = torch.cat([torch.ones(2, 21, dtype=torch.bool), torch.zeros(2, 5, dtype=torch.bool)], 1)
    assert_close(
        f"{name} pad keys", module(x, context=context), module(x, context=padded, context_mask=padded_mask), 1e-12
    )
    # ... and a masked key inside the context is the same as leaving it out
    out = module(x, context=context, context_mask=context_mask)
    assert_close(f"{name} masked keys", module(x[:1], context=context[:1, :15]), out[:1], 1e-12)
    # a sequence whose context is all padding: zero attention, so the output is proj's bias
    with torch.no_grad():
        module.proj.bias.normal_()
    context_mask[1] = False
    out = module(x, mask, context=context, context_mask=context_mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], module.proj.bias.expand(9, DIM))
    assert not torch.allclose(out[0], module.proj.bias.expand(9, DIM))


@pytest.mark.parametrize("name", CROSS)
def test_cached_context_kv_equals_forward(name):
    module = build_cross(name)
    x, context, mask, context_mask = inputs()
    k, v, checked = module.context_kv(context, context_mask)
    assert k.shape == v.shape == (2, HEADS, 21, DIM // HEADS) and checked is context_mask
    expected = module(x, mask, context=context, context_mask=context_mask)
    assert_close(f"{name} cached k, v", expected, module.attend_context(x, k, v, mask, context_mask), 1e-12)
    assert module.attend_context(x[:, :0], k, v).shape == (2, 0, DIM)
    assert module(x, context=context[:, :0]).detach().abs().sum() == 0  # no keys at all: zeros (bias is 0)


@pytest.mark.parametrize("name", NON_CROSS)
def test_mechanisms_without_cross_attention_raise(name):
    module = build(name)
    x, context, _, _ = inputs()
    with pytest.raises(ValueError, match=f"attention '{name}' has no cross-attention"):
        module(x, context=context)


def test_cross_attention_errors_name_the_problem():
    module = build("softmax")
    x, context, _, context_mask = inputs()
    with pytest.raises(ValueError, match="was built with causal=True"):
        build("softmax", causal=True)(x, context=context)
    with pytest.raises(ValueError, match="context_mask was given without context"):
        module(x, context_mask=context_mask)
    with pytest.raises(ValueError, match=r"mask must have shape \(B, S\) = \(2, 21\)"):
        module(x, context=context, context_mask=context_mask[:, :5])
    with pytest.raises(ValueError, match="context has width 8"):
        module(x, context=context[..., :8])
    with pytest.raises(ValueError, match="context has batch 1 but x has batch 2"):
        module(x, context=context[:1])
    with pytest.raises(ValueError, match=r"context must have shape \(B, N, dim\)"):
        module(x, context=context[0])
    with pytest.raises(ValueError, match="'nystrom' with conv_kernel > 0 has no cross-attention"):
        build("nystrom", conv_kernel=3)(x, context=context)


def test_flags_match_expectations():
    assert {"softmax", "performer", "linear", "linformer", "nystrom"} <= set(CROSS)
    assert {"local", "dilated", "eva", "none", "psf", "reformer"} <= set(NON_CROSS)
    assert set(REFERENCE_ARGS) >= set(CROSS)


def test_linformer_projects_the_context_keys_and_bounds_their_length():
    """E, F act on the key axis: any number of queries, at most max_length keys (E's first S columns)."""
    module = attnzoo.build("linformer", DIM, HEADS, proj_dim=4, max_length=16).double()
    x = torch.randn(2, 40, DIM, dtype=torch.float64)
    context = torch.randn(2, 17, DIM, dtype=torch.float64)
    assert module(x, context=context[:, :16]).shape == (2, 40, DIM)
    with pytest.raises(ValueError, match="linformer sequence length 17 exceeds its maximum length 16"):
        module(x, context=context)


@pytest.mark.parametrize("name", [spec.name for spec in attnzoo.available()])
def test_functional_cores_follow_the_flag(name):
    """Cross-capable cores take S != N (and equal their reference); the others say they are self-attention only."""
    spec = attnzoo.get_spec(name)
    q, _, _ = make_qkv(2, 2, 9, 8, seed=0)
    _, k, v = make_qkv(2, 2, 21, 8, seed=1)
    if not spec.capabilities.cross_attention:
        with pytest.raises(ValueError, match="self-attention only: q has N=9, k has S=21"):
            spec.functional(q, k, v)
        return
    context_mask = torch.ones(2, 21, dtype=torch.bool)
    context_mask[0, 15:] = False
    out = spec.functional(q, k, v, mask=context_mask, **CROSS_OPTIONS.get(name, {}))
    assert out.shape == (2, 2, 9, 8)
    assert_close(f"{name} core", spec.reference(q, k, v, mask=context_mask, **CROSS_OPTIONS.get(name, {})), out, 1e-12)
