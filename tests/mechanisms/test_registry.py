"""Standard tests for every registered mechanism (parametrised over ``attnzoo.available()``)."""

import argparse
import dataclasses
import re

import pytest
import torch

import attnzoo
from attnzoo.options import options_from_mapping, options_to_dict

# Small options that make each pattern non-trivial at the lengths used here.
TEST_OPTIONS = {
    "local": dict(window_size=4),
    "dilated": dict(segment_lengths=(8, 16), dilation_rates=(1, 2)),
    "butterfly": dict(block_size=4, stage=1),
    "psf": dict(num_factors=3),
    "diffuser": dict(attention_window=8, num_rand=4, num_glob=2),
    "reformer": dict(bucket_size=4, num_buckets=(4,)),
    "ra": dict(num_samples=0),  # eval draws of num_samples >= 1 differ per call (official), see tests/ops/test_ra.py
    "diffuser_fractional": dict(attention_window=8, num_rand=4, num_glob=2),
}
NAMES = [spec.name for spec in attnzoo.available()]
DIM, HEADS = 32, 4


def build(name, causal=False, **extra):
    torch.manual_seed(0)
    module = attnzoo.build(name, DIM, HEADS, causal=causal, **{**TEST_OPTIONS.get(name, {}), **extra})
    return module.double().eval()


def test_registry_lists_foundation_mechanisms():
    assert {"softmax", "local", "dilated", "none"} <= set(NAMES)
    for spec in attnzoo.available():
        assert spec.summary and spec.capabilities.time.startswith("O(")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 7, 50])
def test_shapes_and_backward(name, n):
    module = build(name).train()
    x = torch.randn(2, n, DIM, dtype=torch.float64, requires_grad=True)
    out = module(x)
    assert out.shape == (2, n, DIM)
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", NAMES)
def test_pad_tokens_change_no_real_output(name):
    module = build(name)
    x = torch.randn(2, 48, DIM, dtype=torch.float64)
    mask = torch.ones(2, 48, dtype=torch.bool)
    mask[:, 32:] = False
    y = x.clone()
    y[:, 32:] = torch.randn(2, 16, DIM, dtype=torch.float64) * 10
    out_x, out_y = module(x, mask), module(y, mask)
    assert torch.allclose(out_x[:, :32], out_y[:, :32], atol=1e-12)
    # ... and equal the unpadded sequence alone (patterns here align with the 32 real tokens)
    assert torch.allclose(out_x[:, :32], module(x[:, :32]), atol=1e-12)


@pytest.mark.parametrize("name", [n for n in NAMES if attnzoo.get_spec(n).capabilities.causal])
def test_causal_leakage(name):
    module = build(name, causal=True)
    x = torch.randn(1, 40, DIM, dtype=torch.float64)
    y = x.clone()
    y[:, 25:] += torch.randn(1, 15, DIM, dtype=torch.float64)
    out_x, out_y = module(x), module(y)
    assert torch.allclose(out_x[:, :25], out_y[:, :25], atol=1e-12)
    assert not torch.allclose(out_x[:, 25:], out_y[:, 25:])


@pytest.mark.parametrize("name", [n for n in NAMES if not attnzoo.get_spec(n).capabilities.causal])
def test_causal_refused_when_unsupported(name):
    with pytest.raises(ValueError, match="cannot be causal"):
        attnzoo.build(name, DIM, HEADS, causal=True)


@pytest.mark.parametrize("name", NAMES)
def test_fully_masked_rows_are_zero(name):
    spec = attnzoo.get_spec(name)
    q, k, v = (torch.randn(2, HEADS, 20, 8, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1] = False
    out = spec.functional(q, k, v, mask=mask, **TEST_OPTIONS.get(name, {}))
    assert torch.isfinite(out).all() and out[1].abs().max() == 0
    module_out = build(name)(torch.randn(2, 20, DIM, dtype=torch.float64), mask)
    assert torch.isfinite(module_out).all()


@pytest.mark.parametrize("name", NAMES)
def test_bf16_forward_and_backward_finite(name):
    module = attnzoo.build(name, DIM, HEADS, **TEST_OPTIONS.get(name, {})).to(torch.bfloat16)
    x = torch.randn(2, 33, DIM, dtype=torch.bfloat16, requires_grad=True)
    out = module(x, torch.rand(2, 33) > 0.2)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_long_odd_length(name):
    module = build(name)
    x = torch.randn(1, 1000, DIM, dtype=torch.float64)
    out = module(x, torch.arange(1000)[None] < 990)
    assert out.shape == (1, 1000, DIM) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_functional_matches_reference(name):
    spec = attnzoo.get_spec(name)
    q, k, v = (torch.randn(2, 3, 45, 8, dtype=torch.float64) for _ in range(3))
    mask = torch.arange(45)[None] < torch.tensor([[45], [30]])
    causal = spec.capabilities.causal
    kw = dict(mask=mask, causal=causal, **TEST_OPTIONS.get(name, {}))
    assert torch.allclose(spec.functional(q, k, v, **kw), spec.reference(q, k, v, **kw), atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_attention_map_rows(name):
    module = build(name)
    x = torch.randn(1, 24, DIM, dtype=torch.float64)
    weights = module.attention_map(x)
    assert weights.shape == (1, HEADS, 24, 24)
    if attnzoo.get_spec(name).capabilities.convex:
        assert torch.allclose(weights.sum(-1)[weights.sum(-1) > 0], torch.tensor(1.0, dtype=torch.float64))
    else:  # the map is still the linear operator the module applies to its values
        q, k, v = module.project(x)
        assert torch.allclose(weights @ v, module.attend(q, k, v, None), atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_options_round_trip(name):
    cls = attnzoo.options(name)
    opts = cls(**TEST_OPTIONS.get(name, {}))
    assert options_from_mapping(cls, options_to_dict(opts)) == opts
    parser = argparse.ArgumentParser()
    attnzoo.add_arguments(parser, name, prefix="encoder-attn")
    argv = []
    for key, value in TEST_OPTIONS.get(name, {}).items():
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        argv += [f"--encoder-attn-{key.replace('_', '-')}", text]
    parsed = attnzoo.options_from_args(parser.parse_args(argv))
    assert cls(**parsed) == opts
    module = attnzoo.build(name, DIM, HEADS, **parsed)  # unset flags (None) keep the defaults
    assert module.options == opts


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_lists_valid_ones(name):
    fields = ", ".join(sorted(f.name for f in dataclasses.fields(attnzoo.options(name)))) or "(none)"
    with pytest.raises(ValueError, match=f"unknown option.*bogus.*valid options: {re.escape(fields)}"):
        attnzoo.build(name, DIM, HEADS, bogus=1)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: attnzoo.build("nope", 32, 4), ValueError, "unknown attention mechanism 'nope'; available:"),
        (lambda: attnzoo.build("softmax", 30, 4), ValueError, r"dim \(30\) must be divisible by num_heads \(4\)"),
        (lambda: attnzoo.build("softmax", 32, 0), ValueError, "num_heads must be a positive int"),
        (lambda: attnzoo.build("softmax", 32, 4, dropout=1.5), ValueError, "dropout must be a float in"),
        (lambda: attnzoo.build("local", 32, 4, window_size=-1), ValueError, "window_size must be >= 1, got -1"),
        (lambda: attnzoo.build("local", 32, 4, window_size="8"), TypeError, "window_size must be an int"),
        (lambda: attnzoo.build("local", 32, 4, mode="ring"), ValueError, "mode must be one of"),
        (lambda: attnzoo.build("local", 32, 4, image_height=4), ValueError, "image_height needs attn_2d=True"),
        (lambda: attnzoo.build("dilated", 32, 4, dilation_rates=(1,)), ValueError, "equal length"),
        (lambda: attnzoo.build("local", 32, 4, executor="cuda"), ValueError, "executor must be one of"),
    ],
)
def test_bad_build_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    ("x", "mask", "error", "match"),
    [
        (torch.randn(2, 8), None, ValueError, r"x must have shape \(B, N, dim\)"),
        (torch.randn(2, 8, 16), None, ValueError, "x has width 16 but the module was built with dim=32"),
        (torch.randn(2, 8, 32), torch.ones(2, 9, dtype=torch.bool), ValueError, r"mask must have shape \(B, N\)"),
        (torch.randn(2, 8, 32), torch.ones(2, 8), TypeError, "mask must be a bool tensor"),
        (torch.randint(0, 5, (2, 8, 32)), None, TypeError, "x must be floating point"),
    ],
)
@pytest.mark.parametrize("name", ["softmax", "local"])
def test_bad_forward_inputs(name, x, mask, error, match):
    module = attnzoo.build(name, 32, 4)
    with pytest.raises(error, match=match):
        module(x, mask)


def test_local_2d_needs_square_or_explicit_grid():
    module = attnzoo.build("local", 32, 4, attn_2d=True, window_size=2)
    assert module(torch.randn(1, 36, 32)).shape == (1, 36, 32)
    with pytest.raises(ValueError, match="N=35 tokens: N is not square"):
        module(torch.randn(1, 35, 32))
    wide = attnzoo.build("local", 32, 4, attn_2d=True, window_size=2, image_height=5, image_width=7)
    assert wide(torch.randn(1, 35, 32)).shape == (1, 35, 32)


def test_duplicate_registration_is_an_error():
    from attnzoo.registry import register

    spec = attnzoo.get_spec("softmax")
    with pytest.raises(ValueError, match="registered twice"):
        register("softmax", options=spec.options, capabilities=spec.capabilities)(spec.module)


@pytest.mark.parametrize("name", NAMES)
def test_functional_module_exposes_registry_names(name):
    import attnzoo.functional

    assert getattr(attnzoo.functional, name) is attnzoo.get_spec(name).functional
