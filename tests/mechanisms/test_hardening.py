"""Registry-wide input hardening (issue 7, defects 5-9, 14, 15): every mechanism, its options and its core."""

import dataclasses
import subprocess
import sys
import typing

import pytest
import torch

import attnzoo
from attnzoo.options import _base_type

NAMES = [spec.name for spec in attnzoo.available()]
DIM, HEADS = 16, 2


@pytest.mark.parametrize("name", NAMES)
def test_functional_core_rejects_float_mask(name):
    core = attnzoo.get_spec(name).functional
    q = torch.randn(2, HEADS, 12, 8)
    with pytest.raises(TypeError, match="bool"):
        core(q, q, q, mask=torch.ones(2, 12))


@pytest.mark.parametrize("name", NAMES)
def test_functional_core_names_wrong_mask_shape(name):
    core = attnzoo.get_spec(name).functional
    q = torch.randn(2, HEADS, 12, 8)
    with pytest.raises(ValueError, match=r"mask must have shape .*\(2, 12\).*\(2, 11\)"):
        core(q, q, q, mask=torch.ones(2, 11, dtype=torch.bool))


def test_functional_reachable_after_import_attnzoo():
    code = "import attnzoo; print(attnzoo.functional.local.__name__, attnzoo.functional.softmax.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["local_attention", "softmax_attention"]


@pytest.mark.parametrize("name", NAMES)
def test_eval_forward_leaves_global_rng_alone(name):
    module = attnzoo.build(name, DIM, HEADS, dropout=0.1).eval()
    x = torch.randn(2, 24, DIM)
    before = torch.get_rng_state()
    module(x)
    assert torch.equal(torch.get_rng_state(), before), f"{name} drew from the global RNG in eval"


@pytest.mark.parametrize("name", ["local", "dilated", "softmax"])
def test_training_without_dropout_leaves_global_rng_alone(name):
    module = attnzoo.build(name, DIM, HEADS, dropout=0.0).train()
    x = torch.randn(2, 24, DIM)
    before = torch.get_rng_state()
    module(x)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(0, 9), (3, 0)], ids=["B0", "N0"])
def test_empty_inputs_give_empty_outputs(name, shape):
    module = attnzoo.build(name, DIM, HEADS)
    x = torch.randn(*shape, DIM, requires_grad=True)
    out = module(x, torch.ones(*shape, dtype=torch.bool))
    assert out.shape == (*shape, DIM)
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(0, 9), (3, 0)], ids=["B0", "N0"])
def test_functional_core_empty_inputs(name, shape):
    q = torch.randn(shape[0], HEADS, shape[1], 8)
    assert attnzoo.get_spec(name).functional(q, q, q).shape == q.shape


def _wrong_values(hint):
    """Values of the wrong type for a field annotated ``hint`` (the mistakes YAML and CLIs make)."""
    if hint is bool:
        return ["false", "no", 0, 1]
    if hint is int:
        return [True, "3", 3.0]
    if hint is float:
        return ["0.5", True]
    if hint is str:
        return [1, True]
    if typing.get_origin(hint) is tuple:
        return ["1,2", (1, "2")]
    return []


def _option_cases():
    for spec in attnzoo.available():
        hints = typing.get_type_hints(spec.options)
        for field in dataclasses.fields(spec.options):
            hint, _ = _base_type(hints[field.name])
            for value in _wrong_values(hint):
                yield pytest.param(spec.name, field.name, value, id=f"{spec.name}-{field.name}-{value!r}")


@pytest.mark.parametrize(("name", "field", "value"), list(_option_cases()))
def test_every_option_type_is_checked(name, field, value):
    with pytest.raises(TypeError, match=f"option {field}"):
        attnzoo.build(name, DIM, HEADS, **{field: value})


def test_bool_strings_do_not_switch_options_on():
    with pytest.raises(TypeError, match="attn_2d must be a bool"):
        attnzoo.build("local", DIM, HEADS, attn_2d="false")
    with pytest.raises(TypeError, match="use_rpe must be a bool"):
        attnzoo.build("local", DIM, HEADS, use_rpe="no")


def test_block_size_rejected_for_2d_windows():
    with pytest.raises(ValueError, match="block_size applies to 1D windows only"):
        attnzoo.build("local", DIM, HEADS, attn_2d=True, block_size=64)
    q = torch.randn(1, HEADS, 16, 8)
    with pytest.raises(ValueError, match="block_size applies to 1D windows only"):
        attnzoo.functional.local(q, q, q, window_size=2, grid=(4, 4), block_size=8)
    # ... and it is honoured in 1D: the result does not depend on it
    one = attnzoo.functional.local(q, q, q, window_size=3, block_size=4)
    assert torch.allclose(one, attnzoo.functional.local(q, q, q, window_size=3, block_size=8), atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_reference_is_not_the_fast_path(name):
    spec = attnzoo.get_spec(name)
    assert spec.reference is not None and spec.reference is not spec.functional
    assert spec.reference.__module__.endswith("naive"), spec.reference.__module__


def test_register_rejects_fast_path_as_reference():
    from attnzoo.registry import Capabilities, register

    caps = Capabilities(True, True, False, True, True, "O(1)", "O(1)")
    with pytest.raises(ValueError, match="independent of the fast path"):
        register("x-test", options=attnzoo.options("none"), capabilities=caps, functional=len, reference=len)


def test_none_reference_is_identity_attention():
    v = torch.randn(2, HEADS, 6, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6], dtype=torch.bool)
    ref = attnzoo.get_spec("none").reference(v, v, v, mask=mask)
    assert torch.equal(ref[0, :, :4], v[0, :, :4]) and torch.equal(ref[0, :, 4:], torch.zeros_like(v[0, :, 4:]))
