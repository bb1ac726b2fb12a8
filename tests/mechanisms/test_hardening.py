"""Registry-wide input hardening (issue 7, defects 5-9, 14, 15): every mechanism, its options and its core."""

import dataclasses
import math
import re
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


def _float_field_cases():
    for spec in attnzoo.available():
        hints = typing.get_type_hints(spec.options)
        for field in dataclasses.fields(spec.options):
            if _base_type(hints[field.name])[0] is float:
                for value in (math.nan, math.inf, -math.inf):
                    yield pytest.param(spec.name, field.name, value, id=f"{spec.name}-{field.name}-{value}")


FLOAT_FIELD_CASES = list(_float_field_cases())


def test_float_field_cases_cover_the_known_float_options():
    fields = {(case.values[0], case.values[1]) for case in FLOAT_FIELD_CASES}
    known = {("diffuser", "alpha"), ("diffuser_fractional", "epsilon"), ("lara", "alpha_coeff")}
    known |= {("diffuser_fractional", "gamma"), ("performer", "feature_eps")}
    assert known <= fields


@pytest.mark.parametrize(("name", "field", "value"), FLOAT_FIELD_CASES)
def test_every_float_option_must_be_finite(name, field, value):
    """No float option takes NaN (it passes every bound) or +-inf: the dataclass and build refuse both."""
    message = f"option {field} must be finite, got {value!r}"
    with pytest.raises(ValueError, match=re.escape(message)):
        attnzoo.options(name)(**{field: value})
    with pytest.raises(ValueError, match=re.escape(message)):
        attnzoo.build(name, DIM, HEADS, **{field: value})


def test_lara_core_refuses_nan_alpha_coeff():
    q = torch.randn(1, HEADS, 12, 8)
    with pytest.raises(ValueError, match="option alpha_coeff must be finite, got nan"):
        attnzoo.functional.lara(q, q, q, alpha_coeff=math.nan)


NON_CAUSAL = [spec.name for spec in attnzoo.available() if not spec.capabilities.causal]


@pytest.mark.parametrize("name", NON_CAUSAL)
def test_module_built_directly_refuses_causal(name):
    """The constructor itself checks the registered capabilities (``attnzoo.build`` is not the only gate)."""
    spec = attnzoo.get_spec(name)
    with pytest.raises(ValueError, match=f"attention '{name}' cannot be causal; causal mechanisms: butterfly"):
        spec.module(DIM, HEADS, causal=True, dropout=0.0, options=spec.options())


def test_reformer_built_directly_refuses_causal():
    from attnzoo.mechanisms.reformer import ReformerAttention, ReformerOptions

    with pytest.raises(ValueError, match="attention 'reformer' cannot be causal"):
        ReformerAttention(DIM, HEADS, causal=True, options=ReformerOptions())


@pytest.fixture
def limited_mechanism():
    """A mechanism registered for this test only: no padding mask, no cross attention, causal only."""
    from attnzoo.mechanisms.none import NoAttention
    from attnzoo.registry import _REGISTRY, Capabilities, register

    class Limited(NoAttention):
        """Test-only mechanism."""

    caps = Capabilities(True, False, False, True, True, "O(N*d)", "O(N*d)", bidirectional=False)
    register("x-limited", options=attnzoo.options("none"), capabilities=caps)(Limited)
    try:
        yield Limited
    finally:
        del _REGISTRY["x-limited"]


def test_constructor_and_forward_refuse_what_the_capabilities_rule_out(limited_mechanism):
    opts = attnzoo.options("none")()
    with pytest.raises(ValueError, match="attention 'x-limited' is causal only; build it with causal=True"):
        limited_mechanism(DIM, HEADS, causal=False, options=opts)
    module = limited_mechanism(DIM, HEADS, causal=True, options=opts)
    x = torch.randn(2, 5, DIM)
    assert torch.equal(module(x, torch.ones(2, 5, dtype=torch.bool)), module(x))  # no padding: nothing to honour
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    with pytest.raises(ValueError, match="attention 'x-limited' cannot honour a padding mask with padded tokens"):
        module(x, mask)
    with pytest.raises(ValueError, match="attention 'x-limited' cannot honour a padding mask"):
        module.prefill(x, mask)
    with pytest.raises(ValueError, match="attention 'x-limited' has no cross-attention"):
        module(x, context=x)


def test_unregistered_subclass_inherits_its_base_capabilities():
    from attnzoo.mechanisms.reformer import ReformerAttention, ReformerOptions

    class Mine(ReformerAttention):
        """An unregistered subclass of a registered mechanism."""

    with pytest.raises(ValueError, match="attention 'reformer' cannot be causal"):
        Mine(DIM, HEADS, causal=True, options=ReformerOptions())


PADDED = [spec.name for spec in attnzoo.available() if spec.capabilities.key_padding_mask]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", PADDED)
def test_non_finite_padded_tokens_reach_no_row(name, bad):
    """NaN/inf in padded tokens of x: every real row as with clean padding, the padded rows 0 before ``proj``."""
    torch.manual_seed(0)
    causal = not attnzoo.get_spec(name).capabilities.bidirectional
    module = attnzoo.build(name, DIM, HEADS, causal=causal).eval()
    seen: list[torch.Tensor] = []
    module.proj.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    x = torch.randn(2, 24, DIM)
    mask = torch.ones(2, 24, dtype=torch.bool)
    mask[0, 17:] = False
    mask[1, :3] = False
    dirty = x.masked_fill(~mask[..., None], bad)

    def run(inp):
        if isinstance(getattr(module, "generator", None), torch.Generator):  # same draws twice (ra samples in eval)
            module.generator.manual_seed(0)
        with torch.no_grad():
            return module(inp, mask)

    clean, out = run(x), run(dirty)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[mask], clean[mask], rtol=0, atol=0)
    assert torch.equal(seen[-1][~mask], torch.zeros_like(seen[-1][~mask]))


SHORT_SEQUENCE = r"at least one token per process: a sequence of N=2 tokens cannot be split over 3 processes"


def test_sequence_parallel_core_names_n_and_the_process_count(monkeypatch):
    """Chunks [1, 1, 0] of N=2 over 3 processes: the gathered length check names N and P (no processes spawned)."""
    import torch.distributed as dist

    from attnzoo.ops.dilated.parallel_comm import global_length

    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 3)
    lengths = (1, 1, 0)  # torch.tensor_split(2 tokens, 3): every rank's chunk length
    monkeypatch.setattr(
        dist, "all_gather", lambda out, mine, group=None: [t.fill_(n) for t, n in zip(out, lengths, strict=True)]
    )
    with pytest.raises(ValueError, match=SHORT_SEQUENCE):
        global_length(1)


def test_sequence_parallel_training_split_names_n_and_the_process_count():
    from attnzoo.train.sequence_parallel import SequenceParallel, _split

    sp = SequenceParallel(size=3, group=None, rank=0, data_rank=0, data_world=1)
    batch = {"input_ids": torch.zeros(1, 2, dtype=torch.long), "mask": torch.ones(1, 2, dtype=torch.bool)}
    with pytest.raises(ValueError, match=SHORT_SEQUENCE):
        _split(batch, sp)


@pytest.mark.parametrize("proposal_gen", ["no-param-pool-mixed", "no-param-pool-vmixed"])
def test_lara_2d_key_mixing_leaves_out_empty_cells(proposal_gen):
    """8x8 grid, 4x4 cells of 2x2 tokens; image 0 padded from row 6 on: its last 4 cells are empty and take
    no part in the key re-mixing softmax (a dense recomputation over the real cells only)."""
    from attnzoo.ops.lara import Landmarks, lara_attention

    torch.manual_seed(0)
    b, h, n, d = 2, HEADS, 64, 8
    q, k, v = (torch.randn(b, h, n, d, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, 48:] = False
    module = attnzoo.build("lara", h * d, h, attn_2d=True, num_landmarks=16, proposal_gen=proposal_gen).double()

    def cell_means(t):  # (B, H, 64, e) -> (B, H, 16, e) masked means of the 2x2 cells, row-major
        w = mask[:, None, :, None].to(t.dtype)
        pooled = (t * w).reshape(b, h, 4, 2, 4, 2, -1).sum((3, 5))
        count = w.reshape(b, 1, 4, 2, 4, 2, 1).sum((3, 5))
        return (pooled / count.clamp(min=1)).reshape(b, h, 16, -1)

    valid = cell_means(torch.ones(b, h, n, 1, dtype=torch.float64))[:, 0, :, 0] > 0
    assert valid.sum(-1).tolist() == [12, 16]
    q_lm, k_lm = cell_means(q), cell_means(k)
    sim = d**-0.5 * k_lm @ k_lm.transpose(-1, -2)
    if proposal_gen.endswith("vmixed"):
        sim = sim + torch.log(cell_means(v).norm(dim=-1) + 1e-4)[..., None, :]
    sim = sim.masked_fill(~valid[:, None, None, :], -math.inf)
    expected_lm = Landmarks(q_lm, torch.softmax(sim, -1) @ k_lm, valid)
    got_lm = module.eval().landmarks(q, k, v, mask)
    torch.testing.assert_close(got_lm.k, expected_lm.k, rtol=1e-12, atol=1e-12)
    expected = lara_attention(q, k, v, mask=mask, landmarks=expected_lm)
    torch.testing.assert_close(module.attend(q, k, v, mask), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("name", "opts"), [("ra", {"compat": True}), ("lara", {"compat": True, "attn_2d": True})], ids=["ra", "lara-2d"]
)
def test_compat_quirks_keep_padded_content(name, opts):
    """Where an official quirk lets padded tokens in (ra E9, lara's 2D pooling), their content still reaches
    real rows under ``compat`` (the module does not zero them), and not without it."""
    x = torch.randn(2, 16, DIM, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0, 12:] = False
    other = x.masked_fill(~mask[..., None], 3.0)
    for compat in (True, False):
        module = attnzoo.build(name, DIM, HEADS, **{**opts, "compat": compat}).eval()
        outs = []
        for inp in (x, other):
            module.generator.manual_seed(0)
            with torch.no_grad():
                outs.append(module(inp, mask)[mask])
        assert module.padding_takes_part() is compat
        assert torch.equal(outs[0], outs[1]) is not compat


def test_reformer_padding_changes_no_real_row():
    """Default num_buckets and hashing follow each sequence's real length: a sequence alone, padded to 3x its
    length, or batched with a longer one gives the same rows. Before, HF's padded-length rule (2 buckets at
    N=100, 8 at N=300) moved these real rows by 0.24 in the core and 1.0e-3 in the module."""
    from attnzoo.ops.reformer import naive_reformer_attention, reformer_attention

    gen = torch.Generator().manual_seed(0)
    q, v = torch.randn(2, HEADS, 300, 8, generator=gen), torch.randn(2, HEADS, 300, 8, generator=gen)
    mask = torch.arange(300)[None] < torch.tensor([[100], [300]])
    alone = reformer_attention(q[:1, :, :100], q[:1, :, :100], v[:1, :, :100])
    padded = reformer_attention(q, q, v, mask=mask)
    torch.testing.assert_close(padded[0, :, :100], alone[0], rtol=1e-6, atol=1e-6)
    assert torch.equal(padded[0, :, 100:], torch.zeros_like(padded[0, :, 100:]))
    torch.testing.assert_close(padded[1:], reformer_attention(q[1:], q[1:], v[1:]), rtol=1e-6, atol=1e-6)
    short = torch.arange(120)[None] < 100  # 120 tokens: the reference loop stays fast
    ref = naive_reformer_attention(
        q[:1, :, :120].double(), q[:1, :, :120].double(), v[:1, :, :120].double(), mask=short
    )
    torch.testing.assert_close(ref[0, :, :100], alone[0].double(), rtol=1e-5, atol=1e-6)
    module = attnzoo.build("reformer", DIM, HEADS).eval()
    x = torch.randn(1, 300, DIM, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(module(x, mask[:1])[:, :100], module(x[:, :100]), rtol=1e-5, atol=1e-6)


def test_reformer_pad_slots_keeps_hf_padded_length_rule():
    """With ``pad_slots`` (HF's behaviour) the plan follows the padded length, as HF sees it."""
    from attnzoo.ops.reformer.hashing import lsh_plan, plan_lengths

    mask = torch.arange(300)[None] < torch.tensor([[100], [300]])
    assert plan_lengths(2, 300, mask, pad_slots=True) == [300, 300]
    assert plan_lengths(2, 300, mask, pad_slots=False) == [100, 300]
    assert lsh_plan(100, 64, 2, None) == (True, 2, (2,)) and lsh_plan(300, 64, 2, None) == (True, 2, (8,))
    assert lsh_plan(50, 64, 2, None)[:2] == (False, 1)
