"""Every functional core takes ``F.scaled_dot_product_attention``'s signature (issue 24).

``softmax`` is checked against SDPA itself over the SDPA test matrix (input ranks, broadcasting
masks, float masks, causal, scale, GQA, dropout with a fixed seed). Every other mechanism either
honours an SDPA argument, equal to its own ``mask=`` / ``causal=`` call, or refuses it with a message
naming the mechanism and the argument. Option values are checked with the module's options dataclass.
"""

import dataclasses
import inspect

import pytest
import torch
import torch.nn.functional as F

import attnzoo
from attnzoo.ops.common.sdpa import SDPA_ARGUMENTS

from .test_registry import NAMES, TEST_OPTIONS

B, H, N, D = 2, 2, 16, 8
OTHERS = [name for name in NAMES if not attnzoo.get_spec(name).capabilities.attn_mask]


def call(name, q, k, v, *args, **kw):
    """``attnzoo.functional.<name>`` with the small registry-test options."""
    return getattr(attnzoo.functional, name)(q, k, v, *args, **{**TEST_OPTIONS.get(name, {}), **kw})


def takes(name, argument):
    """Whether the mechanism's own core (under the SDPA wrapper) has keyword ``argument``."""
    return argument in inspect.signature(inspect.unwrap(attnzoo.get_spec(name).functional)).parameters


def qkv(*shape, kv_heads=None, s=None, ev=None):
    """Random float64 ``query (*shape)`` and key/value with ``kv_heads`` heads, ``s`` keys, ``ev`` value width."""
    gen = torch.Generator().manual_seed(0)
    *lead, length, e = shape
    if kv_heads is not None:
        lead[-1] = kv_heads
    q = torch.randn(*shape, generator=gen, dtype=torch.float64)
    k = torch.randn(*lead, s or length, e, generator=gen, dtype=torch.float64)
    return q, k, torch.randn(*lead, s or length, ev or e, generator=gen, dtype=torch.float64)


def padding():
    """``(B, N)`` bool: batch row 1 has 5 padded tokens at the end."""
    pad = torch.ones(B, N, dtype=torch.bool)
    pad[1, -5:] = False
    return pad


def bool_mask(*shape, seed=1):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) > 0.3


def float_mask(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


TRIL = torch.ones(N, N, dtype=torch.bool).tril()
SDPA_CASES = {
    "4d": ((B, H, N, D), {}, {}),
    "3d": ((H, N, D), {}, {}),
    "2d": ((N, D), {}, {}),
    "5d": ((2, B, H, N, D), {}, {}),
    "cross-S7-Ev3": ((B, H, 5, D), dict(s=7, ev=3), {}),
    "bool-NS": ((B, H, N, D), {}, dict(attn_mask=bool_mask(N, N))),
    "bool-1S": ((B, H, N, D), {}, dict(attn_mask=bool_mask(1, N))),
    "bool-B11S": ((B, H, N, D), {}, dict(attn_mask=padding()[:, None, None, :])),
    "bool-BHNS": ((B, H, N, D), {}, dict(attn_mask=bool_mask(B, H, N, N))),
    "bool-3d-HNS": ((H, N, D), {}, dict(attn_mask=bool_mask(H, N, N))),
    "float-BHNS": ((B, H, N, D), {}, dict(attn_mask=float_mask(B, H, N, N))),
    "float-1NS-neginf": ((B, H, N, D), {}, dict(attn_mask=bool_mask(1, N, N).double().log())),
    "row-sees-no-key": (
        (B, H, N, D),
        {},
        dict(attn_mask=torch.ones(N, N, dtype=torch.bool).index_fill(0, torch.tensor([3]), False)),
    ),
    "causal": ((B, H, N, D), {}, dict(is_causal=True)),
    "causal-and-bool": ((B, H, N, D), {}, dict(is_causal=True, attn_mask=bool_mask(B, 1, N, N))),
    "scale": ((B, H, N, D), {}, dict(scale=0.3)),
    "gqa": ((B, 4, N, D), dict(kv_heads=2), dict(enable_gqa=True)),
    "gqa-causal-mask": (
        (B, 4, N, D),
        dict(kv_heads=1),
        dict(enable_gqa=True, is_causal=True, attn_mask=bool_mask(B, 4, N, N)),
    ),
    "dropout": ((B, H, N, D), {}, dict(dropout_p=0.4)),
    "dropout-3d-mask": ((H, N, D), {}, dict(dropout_p=0.4, attn_mask=bool_mask(N, N))),
    "dropout-gqa-causal": ((B, 4, N, D), dict(kv_heads=2), dict(dropout_p=0.4, enable_gqa=True, is_causal=True)),
}


@pytest.mark.parametrize("case", list(SDPA_CASES))
def test_softmax_is_sdpa(case):
    shape, kv, kwargs = SDPA_CASES[case]
    q, k, v = qkv(*shape, **kv)
    torch.manual_seed(5)
    expected = F.scaled_dot_product_attention(q, k, v, **kwargs)
    torch.manual_seed(5)
    out = attnzoo.functional.softmax(q, k, v, **kwargs)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    if "dropout_p" in kwargs:  # the seed made the draws equal, and they did drop something
        assert not torch.allclose(out, F.scaled_dot_product_attention(q, k, v, **{**kwargs, "dropout_p": 0.0}))


def test_softmax_sdpa_arguments_by_position():
    q, k, v = qkv(B, H, N, D)
    mask = bool_mask(N, N)
    expected = F.scaled_dot_product_attention(q, k, v, mask, 0.0, True, scale=0.2)
    torch.testing.assert_close(attnzoo.functional.softmax(q, k, v, mask, 0.0, True, 0.2), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_signature_is_sdpa_then_own_keywords(name):
    core = attnzoo.get_spec(name).functional
    assert getattr(attnzoo.functional, name) is core is getattr(attnzoo.functional, f"{name}_attention")
    params = inspect.signature(core).parameters
    assert tuple(params)[:8] == SDPA_ARGUMENTS
    assert [params[n].default for n in SDPA_ARGUMENTS[3:]] == [None, 0.0, False, None, False]
    assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in tuple(params)[8:])
    assert {"mask", "causal"} <= set(params)


@pytest.mark.parametrize("name", NAMES)
def test_key_padding_attn_mask_is_the_mask_keyword(name):
    q, k, v = qkv(B, H, N, D)
    pad = padding()
    expected = call(name, q, k, v, mask=pad)
    for attn_mask in (
        pad[:, None, None, :],
        pad[:, None, None, :].expand(B, H, N, N),
        torch.where(pad, 0.0, -torch.inf).double()[:, None, None],
    ):
        torch.testing.assert_close(call(name, q, k, v, attn_mask), expected, rtol=0, atol=0)
    # given both, they combine: an extra padded key in row 0
    extra = pad.clone()
    extra[0, 2] = False
    torch.testing.assert_close(
        call(name, q, k, v, extra[:, None, None], mask=pad), call(name, q, k, v, mask=extra), rtol=0, atol=0
    )


@pytest.mark.parametrize("name", NAMES)
def test_causal_attn_mask_and_is_causal(name):
    q, k, v = qkv(B, H, N, D)
    pad = padding()
    calls = dict(
        tril=lambda: call(name, q, k, v, TRIL),
        tril_and_padding=lambda: call(name, q, k, v, TRIL & pad[:, None, None, :]),
        is_causal=lambda: call(name, q, k, v, is_causal=True),
    )
    if not attnzoo.get_spec(name).capabilities.causal:
        for attempt in calls.values():
            with pytest.raises(ValueError, match=f"attention '{name}' cannot be causal"):
                attempt()
        return
    causal = call(name, q, k, v, causal=True)
    torch.testing.assert_close(calls["tril"](), causal, rtol=0, atol=0)
    torch.testing.assert_close(calls["is_causal"](), causal, rtol=0, atol=0)
    torch.testing.assert_close(calls["tril_and_padding"](), call(name, q, k, v, mask=pad, causal=True), rtol=0, atol=0)
    with pytest.raises(ValueError, match="is_causal=True and causal=False contradict"):
        call(name, q, k, v, is_causal=True, causal=False)


@pytest.mark.parametrize("name", NAMES)
def test_rows_that_see_no_key_give_zero(name):
    q, k, v = qkv(B, H, N, D)
    pad = padding()
    both = pad[:, None, :, None] & pad[:, None, None, :]  # padded queries see nothing (a common form)
    out = call(name, q, k, v, both)
    assert out[1, :, -5:].abs().max() == 0
    torch.testing.assert_close(out[:, :, :-5], call(name, q, k, v, mask=pad)[:, :, :-5], rtol=0, atol=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("name", NAMES)
def test_padded_keys_content_reaches_no_real_row(name, bad):
    """NaN/inf in padded keys' and values' rows: every real query row as with clean padding."""
    q, k, v = qkv(B, H, N, D)
    pad = padding()
    clean = call(name, q, k, v, mask=pad)
    k_bad, v_bad = k.clone(), v.clone()
    k_bad[1, :, -5:], v_bad[1, :, -5:] = bad, -bad
    dirty = call(name, q, k_bad, v_bad, mask=pad)
    torch.testing.assert_close(dirty[:, :, :-5], clean[:, :, :-5], rtol=0, atol=0)
    torch.testing.assert_close(dirty[0], clean[0], rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_fp32_inputs_under_autocast_run_in_the_autocast_dtype(name):
    """As SDPA under autocast: fp32 q, k, v are cast to bf16 first, the output is bf16 (causal where possible)."""
    q, k, v = (t.float() for t in qkv(B, H, N, D))
    causal = attnzoo.get_spec(name).capabilities.causal
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = call(name, q, k, v, is_causal=causal)
    expected = call(name, q.bfloat16(), k.bfloat16(), v.bfloat16(), is_causal=causal)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("name", OTHERS)
def test_masks_a_mechanism_cannot_honour_are_refused(name):
    q, k, v = qkv(B, H, N, D)
    said = f"attention '{name}' takes a key-padding attn_mask"
    per_head = torch.ones(B, H, 1, N, dtype=torch.bool)
    per_head[:, 0, :, 3] = False
    with pytest.raises(ValueError, match=f"{said}.*differs between heads"):
        call(name, q, k, v, per_head)
    with pytest.raises(ValueError, match=f"{said}.*another pattern"):
        call(name, q, k, v, bool_mask(N, N))
    with pytest.raises(ValueError, match=f"{said}.*additive float mask with values other than 0 and -inf"):
        call(name, q, k, v, float_mask(N, N))


@pytest.mark.parametrize("name", NAMES)
def test_scale_where_the_mechanism_has_one(name):
    q, k, v = qkv(B, H, N, D)
    if not takes(name, "scale"):
        with pytest.raises(ValueError, match=f"attention '{name}' has no softmax scale to set; pass scale=None"):
            call(name, q, k, v, scale=0.3)
        return
    default = call(name, q, k, v)
    torch.testing.assert_close(call(name, q, k, v, scale=D**-0.5), default, rtol=0, atol=1e-12)  # SDPA's default
    assert (call(name, q, k, v, scale=0.05) - default).abs().max() > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_dropout_where_the_mechanism_has_weights(name):
    q, k, v = qkv(B, H, N, D)
    if not takes(name, "dropout_p"):
        call(name, q, k, v, dropout_p=0.0)
        with pytest.raises(ValueError, match=f"attention '{name}' has no attention weights to drop"):
            call(name, q, k, v, dropout_p=0.5)
        return
    torch.manual_seed(3)
    first = call(name, q, k, v, dropout_p=0.5)
    torch.manual_seed(3)
    torch.testing.assert_close(call(name, q, k, v, dropout_p=0.5), first, rtol=0, atol=0)
    assert (first - call(name, q, k, v)).abs().max() > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_grouped_heads_and_leading_dims(name):
    q, k, v = qkv(B, 4, N, D, kv_heads=2)
    expected = call(name, q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))
    torch.testing.assert_close(call(name, q, k, v, enable_gqa=True), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="query has 4 heads, key and value 2; pass enable_gqa=True"):
        call(name, q, k, v)
    with pytest.raises(ValueError, match=r"query heads \(4\) must be a multiple of the key/value heads \(3\)"):
        call(name, q, *qkv(B, 4, N, D, kv_heads=3)[1:], enable_gqa=True)
    torch.testing.assert_close(call(name, q[0], q[0], q[0]), call(name, q[:1], q[:1], q[:1])[0], rtol=0, atol=0)
    five = q.reshape(2, 1, 4, N, D)
    torch.testing.assert_close(call(name, five, five, five), call(name, q, q, q).reshape(five.shape), rtol=0, atol=0)


def test_mask_shape_that_does_not_broadcast_is_named():
    q, k, v = qkv(B, H, N, D)
    with pytest.raises(
        ValueError, match=r"attn_mask of shape \(3, 1, 1, 16\) does not broadcast to \(\.\.\., H, L, S\)"
    ):
        attnzoo.functional.local(q, k, v, torch.ones(3, 1, 1, N, dtype=torch.bool))


OPTION_CASES = [  # (name, core keyword, value, options field): each a silent or cryptic failure before
    ("linformer", "proj_dim", 0, "proj_dim"),  # returned zeros
    ("performer", "num_features", 0, "num_features"),  # IndexError
    ("nystrom", "num_landmarks", 0, "num_landmarks"),  # ZeroDivisionError
    ("reformer", "bucket_size", 0, "bucket_size"),  # ZeroDivisionError
    ("reformer", "bucket_size", -1, "bucket_size"),  # TypeError about complex numbers
    ("psf", "num_factors", 0, "num_factors"),  # silently the default
    ("diffuser", "num_glob", -1, "num_glob"),  # a complete graph
    ("local", "block_size", 0, "block_size"),  # silently the default
    ("local", "window_size", 0, "window_size"),
    ("dilated", "segment_lengths", (8, 0), "segment_lengths"),
    ("eva", "num_landmarks", 0, "num_landmarks"),
    ("scatterbrain", "num_features", 0, "approx_attn_dim"),
    ("lara", "count_padding", "yes", "compat"),
]


@pytest.mark.parametrize(("name", "keyword", "value", "field"), OPTION_CASES, ids=lambda x: str(x))
def test_functional_options_get_the_modules_message(name, keyword, value, field):
    q = torch.randn(B, H, N, D)
    with pytest.raises((TypeError, ValueError)) as module_error:
        attnzoo.build(name, H * D, H, **{field: value})
    with pytest.raises(type(module_error.value)) as core_error:
        getattr(attnzoo.functional, name)(q, q, q, **{keyword: value})
    assert str(module_error.value) in str(core_error.value)
    if keyword != field:
        assert f"{field} is the core's {keyword}" in str(core_error.value)


KNOBS = {  # scalar core keywords that are no option of the module: how the core runs, not what it computes
    "linear": {"chunk_size"},
    "performer": {"chunk_size"},
    "linformer": {"seed"},  # draws the default E/F; the module learns them
    "diffuser_fractional": {"zero_pad_rows"},
}


@pytest.mark.parametrize("name", NAMES)
def test_every_scalar_core_keyword_is_an_option_field(name):
    """The correspondence core keyword -> options field is complete: a new scalar keyword must map to a field."""
    spec = attnzoo.get_spec(name)
    fields = {f.name for f in dataclasses.fields(spec.options)}
    params = inspect.signature(inspect.unwrap(spec.functional)).parameters
    renames = {
        "lara": {"antithetic": "use_antithetics", "count_padding": "compat"},
        "scatterbrain": {"num_features": "approx_attn_dim"},
    }
    unmatched = {
        n
        for n, p in params.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
        and n not in ("mask", "causal", "scale", "dropout_p", "attn_mask", "grid")
        and not any(t in str(p.annotation) for t in ("Tensor", "ChunkKeys", "Landmarks"))
        and renames.get(name, {}).get(n, n) not in fields
    }
    assert unmatched == KNOBS.get(name, set())
    core, q = spec.functional, torch.randn(1, H, 16, D)
    for keyword, field in renames.get(name, {}).items():  # the rename is live: a wrong type is the field's error
        with pytest.raises(TypeError, match=f"option {field} .*is the core's {keyword}"):
            core(q, q, q, **{keyword: "x"})


def test_functional_grid_is_checked_as_attn_2d():
    q = torch.randn(1, H, 16, D)
    with pytest.raises(ValueError, match="option block_size applies to 1D windows only"):
        attnzoo.functional.local(q, q, q, window_size=2, grid=(4, 4), block_size=8)
    with pytest.raises(ValueError, match="option image_height must be >= 1, got 0"):
        attnzoo.functional.eva(q, q, q, grid=(0, 16))


def test_unknown_option_is_named():
    q = torch.randn(1, H, 16, D)
    with pytest.raises(ValueError, match=r"unknown option\(s\) approx_attn_dim for the 'scatterbrain' functional core"):
        attnzoo.functional.scatterbrain(q, q, q, approx_attn_dim=8)


def test_checked_values_are_remembered_by_type():
    q = torch.randn(1, H, 16, D)
    attnzoo.functional.performer(q, q, q, num_features=16)  # checked once, then remembered
    with pytest.raises(TypeError, match="option num_features must be an int, got True"):
        attnzoo.functional.performer(q, q, q, num_features=True)  # True == 1 and hashes alike; still refused
    attnzoo.functional.performer(q, q, q, num_features=1)
    with pytest.raises(TypeError, match=r"option num_features must be an int, got 1\.0"):
        attnzoo.functional.performer(q, q, q, num_features=1.0)
