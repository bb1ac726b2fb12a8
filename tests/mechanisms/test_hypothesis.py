"""Property sweep: random small shapes, masks and causality, every mechanism vs its reference."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnzoo

from .test_registry import NAMES, TEST_OPTIONS


@st.composite
def cases(draw):
    name = draw(st.sampled_from(NAMES))
    b = draw(st.integers(1, 2))
    h = draw(st.integers(1, 3))
    n = draw(st.integers(1, 40))
    d = draw(st.sampled_from([2, 4, 8]))
    lengths = draw(st.lists(st.integers(0, n), min_size=b, max_size=b))
    causal = draw(st.booleans()) and attnzoo.get_spec(name).capabilities.causal
    seed = draw(st.integers(0, 2**16))
    return name, b, h, n, d, lengths, causal, seed


@settings(max_examples=60, deadline=None)
@given(cases())
def test_random_shapes_match_reference(case):
    name, b, h, n, d, lengths, causal, seed = case
    spec = attnzoo.get_spec(name)
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=gen, dtype=torch.float64) for _ in range(3))
    mask = torch.arange(n)[None] < torch.tensor(lengths)[:, None]
    kw = dict(mask=mask, causal=causal, **TEST_OPTIONS.get(name, {}))
    out = spec.functional(q, k, v, **kw)
    assert out.shape == (b, h, n, d)
    assert torch.isfinite(out).all()
    live = torch.tensor(lengths) > 0  # sequences with no real token: checked for zeros below, not vs the reference
    assert torch.allclose(out[live], spec.reference(q, k, v, **kw)[live], atol=1e-10)
    for row, length in enumerate(lengths):
        if length == 0:  # no real key anywhere: zeros, not NaN
            assert out[row].abs().max() == 0
