"""``torch.compile(module, fullgraph=True)`` on CPU, driven by ``Capabilities.compile_fullgraph``.

A mechanism flagged True must give eager's outputs and input gradients under the default (inductor)
backend; one flagged False must really fail fullgraph capture. Inductor compiles take 10-60 s each
on this CPU, so the sweep is ``slow``; CI runs the flag-honesty checks (dynamo capture only, a few
seconds each) and softmax through AOT autograd.
"""

import pytest
import torch
import torch._dynamo

import attnzoo

from .test_registry import DIM, build

pytestmark = pytest.mark.compile

SPECS = attnzoo.available()
COMPILING = [s.name for s in SPECS if s.capabilities.compile_fullgraph]
REFUSING = [s.name for s in SPECS if not s.capabilities.compile_fullgraph]
CASES = [
    (s.name, causal)
    for s in SPECS
    if s.capabilities.compile_fullgraph
    for causal in (False, True)
    if (s.capabilities.causal if causal else s.capabilities.bidirectional)
]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def inputs(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (2, n, DIM)`` fp64 needing grad and a padding mask with 6 pad tokens in row 1."""
    x = torch.randn(2, n, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, n - 6 :] = False
    return x, mask


def check_same_as_eager(name: str, causal: bool, backend: str) -> None:
    module = build(name, causal=causal)
    x, mask = inputs()
    compiled = torch.compile(module, fullgraph=True, backend=backend)
    ref, out = module(x, mask), compiled(x, mask)
    assert out.shape == ref.shape and ref.abs().max() > 0
    torch.testing.assert_close(out, ref, atol=1e-9, rtol=1e-9)
    weights = torch.randn(ref.shape, dtype=ref.dtype, generator=torch.Generator().manual_seed(1))
    (grad_ref,) = torch.autograd.grad((ref * weights).sum(), x)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    assert grad_ref.abs().max() > 0
    torch.testing.assert_close(grad, grad_ref, atol=1e-9, rtol=1e-9)


def test_the_flag_splits_the_registry():
    assert "softmax" in COMPILING and "local" in REFUSING
    assert sorted(COMPILING + REFUSING) == sorted(s.name for s in SPECS)


def test_softmax_fullgraph_matches_eager_through_aot_autograd():
    check_same_as_eager("softmax", True, "aot_eager")


@pytest.mark.parametrize("name", REFUSING)
def test_a_false_flag_is_honest(name):
    """Eager runs on the input; fullgraph capture (dynamo only, no backend compile) raises. 25 tokens: no
    default window or group size divides it, so the block-sparse plan runs (where windows divide N, the
    engine's grouped path alone may take the call and capture: the flag is about the general case)."""
    spec = attnzoo.get_spec(name)
    module = build(name, causal=spec.capabilities.causal and not spec.capabilities.bidirectional)
    x, mask = inputs(25)
    assert module(x, mask).isfinite().all()
    with pytest.raises(torch._dynamo.exc.TorchDynamoException):
        torch.compile(module, fullgraph=True, backend="eager")(x, mask)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "causal"), CASES)
def test_fullgraph_inductor_matches_eager(name, causal):
    check_same_as_eager(name, causal, "inductor")
