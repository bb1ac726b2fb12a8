"""``from_official_model("nystromformer-lra")`` and ``attnzoo.train.optimizer_for`` against the official code.

Fixtures ``tests/fixtures/nystromformer_lra/<case>.pt`` come from mlpen/Nystromformer ``LRA/code`` @
56893131bf3fa99b5a2d3ab452a591dca722529a run on CPU (torch 2.13, fp32; performer-pytorch 0.15.0,
transformers 3.3.1 ``LSHSelfAttention``). Per case: ``model_wrapper.ModelForSC`` (``ModelForSCDual`` for
``nystrom_dual``) built from ``config`` exactly as ``run_tasks.py`` builds it (``mixed_precision`` False on
CPU; ``seq_len`` added for mlpen's ``NystromAttention``, which reads it), dropout 0; its ``state_dict()``;
eval logits ``seq_classifer(model(ids, mask))`` (after ``append_cls`` for CLS) with ``torch.manual_seed(1234)``
before the call; then 12 steps of ``run_tasks.py``'s ``step("train")`` (its AdamW and OneCycleLR arguments
verbatim, accumulation 1, no GradScaler on CPU) with ``torch.manual_seed(2000 + step)`` before each forward,
recording the mean losses, the learning rates and the final ``state_dict()``. Masks are ``ids != 0``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import attnzoo
from attnzoo.models import Encoder, ModelConfig
from attnzoo.official import from_official_model, official_model_sources, resolve_official
from attnzoo.official.model_builders.nystromformer_lra import attention_kind, convert_lra_model
from attnzoo.train import load_config, optimizer_for
from attnzoo.train.optim import build_optimizer, build_scheduler, run_tasks_training
from attnzoo.train.resume import check_resume

FIXTURES = Path(__file__).parent.parent / "fixtures" / "nystromformer_lra"
KINDS = ("softmax", "none", "nystrom", "linformer", "performer", "linear", "reformer")
CASES = (*KINDS, "softmax_cls_tied", "nystrom_dual")


def load(case: str) -> dict:
    return torch.load(FIXTURES / f"{case}.pt")


def build(fixture: dict, state_dict: dict | None = None) -> torch.nn.Module:
    config = dict(fixture["config"], **({"task": "retrieval"} if fixture["dual"] else {}))
    return from_official_model("nystromformer-lra", config=config, state_dict=state_dict or fixture["state_dict"])


def call_args(tokens: torch.Tensor) -> list[torch.Tensor]:
    """``(documents, B, N)`` uint8 ids -> ``[ids_0, mask_0, (ids_1, mask_1)]``."""
    out = []
    for ids in tokens.long():
        out += [ids, ids != 0]
    return out


def close(got: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> bool:
    """``max |got - expected| <= rtol * max |expected|`` (all-zero ``expected``: equal)."""
    return bool((got - expected).abs().max() <= rtol * expected.abs().max())


def test_source_is_registered():
    assert "nystromformer-lra" in official_model_sources()


@pytest.mark.parametrize("case", CASES)
def test_logits_equal_the_official_model(case):
    fixture = load(case)
    model = build(fixture)
    assert not model.training
    torch.manual_seed(fixture["eval_seed"])  # reformer: the official draws its rotations from the global RNG
    with torch.no_grad():
        logits = model(*call_args(fixture["tokens"]))
    assert logits.shape == fixture["logits"].shape
    assert close(logits, fixture["logits"])


@functools.cache
def trace(case: str) -> tuple[list[float], list[float], dict, dict]:
    """12 steps of attnzoo's model with ``optimizer_for`` on the fixture's weights, batches and seeds.

    Returns the losses, the learning rates, and the initial and final ``state_dict()``.
    """
    fixture = load(case)
    model = build(fixture).train()
    optimizer, scheduler = optimizer_for(model, fixture["training"])
    losses, lrs, initial = [], [], {k: v.clone() for k, v in model.state_dict().items()}
    for step, seed in enumerate(fixture["train_seeds"]):
        optimizer.zero_grad()
        torch.manual_seed(seed)
        logits = model(*call_args(fixture["train_tokens"][step]))
        loss = F.cross_entropy(logits, fixture["train_labels"][step].long())
        loss.backward()
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses, lrs, initial, model.state_dict()


@pytest.mark.parametrize("case", CASES)
def test_twelve_training_steps_give_the_official_losses(case):
    """Same weights, batches and seeds, ``optimizer_for``: the official losses and learning rates."""
    fixture = load(case)
    losses, lrs, _, _ = trace(case)
    assert torch.allclose(torch.tensor(lrs, dtype=torch.float64), fixture["lrs"], rtol=1e-12, atol=0)
    assert close(torch.tensor(losses, dtype=torch.float64), fixture["losses"])


@pytest.mark.parametrize("case", CASES)
def test_twelve_training_steps_give_the_official_weights(case):
    """The weights after the 12 steps equal the official ones (mapped to attnzoo's names)."""
    fixture = load(case)
    _, lrs, initial, final = trace(case)
    entry, args = resolve_official("nystromformer-lra", attention_kind(fixture["config"]["attn_type"]))
    expected = convert_lra_model(fixture["final_state_dict"], fixture["config"], entry, args)
    assert set(final) == set(expected)
    final = dict(final)
    dead, d = {}, fixture["config"]["transformer_dim"]
    if fixture["config"]["attn_type"] == "softmax":
        # softmax is invariant to the key bias (it adds q.b to a whole row of scores): its exact gradient is 0,
        # the computed one float noise (~1e-9) that Adam divides by sqrt(v) + 1e-6; bound the drift by
        # steps * lr * 1e-2 and compare the other rows tightly
        bound = len(lrs) * max(lrs) * 1e-2
        for i in range(2):
            name = f"classifier.encoder.blocks.{i}.attn.qkv.bias"
            assert (final[name][d : 2 * d] - expected[name][d : 2 * d]).abs().max() <= bound
            final[name] = torch.cat([final[name][:d], expected[name][d : 2 * d], final[name][2 * d :]])
    if case == "none":  # official W_q, W_k get no gradient (AdamW skips them); attnzoo's qkv rows only decay
        rows = 2 * d
        decay = math.prod(1 - lr * fixture["training"]["weight_decay"] for lr in lrs)
        for i in range(2):
            for kind in ("weight", "bias"):
                name = f"classifier.encoder.blocks.{i}.attn.qkv.{kind}"
                dead[name] = rows
                torch.testing.assert_close(final[name][:rows], initial[name][:rows] * decay, rtol=1e-6, atol=1e-9)
                assert torch.equal(expected[name][:rows], initial[name][:rows])
    for name, value in final.items():
        start = dead.get(name, 0)
        assert close(value[start:], expected[name][start:]), name


def test_mixed_precision_is_fp32_on_cpu():
    """``mixed_precision`` (True in every run_tasks.py config) autocasts only CUDA inputs, as the official."""
    fixture = load("nystrom")
    model = from_official_model(
        "nystromformer-lra", config={**fixture["config"], "mixed_precision": True}, state_dict=fixture["state_dict"]
    )
    assert model.mixed_precision
    with torch.no_grad():
        logits = model(*call_args(fixture["tokens"]))
    assert logits.dtype == torch.float32 and close(logits, fixture["logits"])


def test_linformer_layers_share_one_projection_and_reformer_has_no_trained_bias():
    linformer = build(load("linformer"))
    blocks = linformer.classifier.encoder.blocks
    assert blocks[0].attn.e_proj is blocks[1].attn.e_proj
    reformer = build(load("reformer"))
    for block in reformer.classifier.encoder.blocks:
        assert block.attn.options.hash_seed is None  # fresh rotations every forward, as the official
        assert not block.attn.qkv.bias.requires_grad and not block.attn.qkv.bias.any()
    tied = build(load("softmax_cls_tied")).classifier.encoder.blocks
    assert tied[0] is tied[1]


def test_reformer_from_official_draws_fresh_rotations():
    layer = attnzoo.from_official("nystromformer-lra", "reformer", dim=8, num_heads=2, args={"max_seq_len": 128})
    assert layer.options.hash_seed is None
    x = torch.randn(1, 128, 8)
    assert not torch.equal(layer(x), layer(x))


def test_config_errors_name_the_problem():
    fixture = load("softmax")
    config = dict(fixture["config"])
    for key in ("transformer_hidden_dim", "attention_dropout", "mixed_precision"):
        with pytest.raises(ValueError, match=f"missing {key}"):
            from_official_model("nystromformer-lra", config={k: v for k, v in config.items() if k != key})
    with pytest.raises(ValueError, match="missing linformer_k"):
        from_official_model("nystromformer-lra", config={**config, "attn_type": "linformer-256"})
    with pytest.raises(ValueError, match="attn_type 'longformer' selects no attention"):
        from_official_model("nystromformer-lra", config={**config, "attn_type": "longformer"})
    with pytest.raises(ValueError, match="pooling_mode must be one of MEAN, CLS, got 'MAX'"):
        from_official_model("nystromformer-lra", config={**config, "pooling_mode": "MAX"})
    with pytest.raises(ValueError, match=r"embedding_dim \(4\) must equal transformer_dim \(8\)"):
        from_official_model("nystromformer-lra", config={**config, "embedding_dim": 4})
    with pytest.raises(ValueError, match=r"num_head \* head_dim \(2 \* 8\) must equal transformer_dim"):
        from_official_model("nystromformer-lra", config={**config, "head_dim": 8})
    sd = dict(fixture["state_dict"])
    with pytest.raises(ValueError, match=r"unexpected tensors .*: junk"):
        from_official_model("nystromformer-lra", config=config, state_dict={**sd, "junk": sd["model.norm.bias"]})
    del sd["model.norm.bias"]
    with pytest.raises(ValueError, match=r"missing model.norm.bias"):
        from_official_model("nystromformer-lra", config=config, state_dict=sd)


def test_linformer_layers_with_different_projections_are_refused():
    fixture = load("linformer")
    sd = dict(fixture["state_dict"])
    sd["model.transformer_1.mha.attn.E"] = sd["model.transformer_1.mha.attn.E"] + 1
    with pytest.raises(ValueError, match=r"attn.E differ"):
        from_official_model("nystromformer-lra", config=fixture["config"], state_dict=sd)


def test_call_errors():
    single, dual = build(load("softmax")), build(load("nystrom_dual"))
    ids = torch.ones(2, 64, dtype=torch.long)
    with pytest.raises(ValueError, match="mask must be bool"):
        single(ids, torch.ones(2, 64))
    with pytest.raises(ValueError, match="single-input model takes tokens and mask only"):
        single(ids, ids > 0, ids, ids > 0)
    with pytest.raises(ValueError, match=r"dual .* takes tokens_0, mask_0, tokens_1, mask_1"):
        dual(ids, ids > 0)


def test_cls_id_pooling_shifts_in_the_last_vocabulary_id():
    """Pooling "cls-id" is the LRA ``append_cls``: position 0 embeds id vocab-1, the last token is dropped."""
    from attnzoo.tasks.spec import TaskSpec

    task = TaskSpec("t", 6, "tokens", 10, 0, 3, "class", False, 0, "accuracy", None, "")
    encoder = Encoder(task, ModelConfig(pooling="cls-id", dim=8, num_heads=2, dropout=0.0, attention_dropout=0.0))
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 0, 0, 0, 0]])
    x, mask = encoder.embed_inputs(ids, ids != 0)
    shifted = torch.tensor([[9, 1, 2, 3, 4, 5], [9, 1, 2, 0, 0, 0]])
    torch.testing.assert_close(x, encoder.embed.proj(shifted) + encoder.positions.weight[:6])
    assert mask.tolist() == (shifted != 0).tolist()
    continuous = TaskSpec("c", 6, "continuous", 0, 3, 3, "class", False, 0, "accuracy", None, "")
    with pytest.raises(ValueError, match="'cls-id' needs token inputs"):
        Encoder(continuous, ModelConfig(pooling="cls-id", dim=8, num_heads=2))


def test_optimizer_for_is_run_tasks_and_needs_its_keys():
    model = build(load("softmax"))
    training = load("softmax")["training"]
    optimizer, scheduler = optimizer_for(model, training)
    assert len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert group["params"] == list(model.parameters())
    assert (group["eps"], group["weight_decay"], group["max_lr"]) == (1e-6, training["weight_decay"], 3e-3)
    assert group["betas"] == (0.95, 0.999)  # OneCycleLR cycles beta1 from 0.95 (run_tasks.py keeps the default)
    assert isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
    with pytest.raises(ValueError, match="training config is missing warmup"):
        optimizer_for(model, {k: v for k, v in training.items() if k != "warmup"})
    for warmup in (1, training["num_train_steps"]):  # an empty phase divides by zero inside torch
        with pytest.raises(ValueError, match=r"needs 2 <= warmup <= num_train_steps - 1"):
            optimizer_for(model, {**training, "warmup": warmup})


def test_nystromformer_preset_trains_with_optimizer_for():
    """``attnzoo train --preset nystromformer``'s optimiser and schedule are ``optimizer_for``'s, step by step."""
    cfg = load_config(task="listops", preset="nystromformer", overrides={"steps": 20, "warmup_steps": 5})
    assert cfg.optimizer == "nystromformer-lra"
    model = build(load("softmax"))
    ours = build_optimizer(model, cfg)
    ours_schedule = build_scheduler(ours, cfg)
    official, official_schedule = optimizer_for(model, run_tasks_training(cfg))
    assert len(ours.param_groups) == 1 and ours.param_groups[0]["params"] == official.param_groups[0]["params"]
    for _ in range(cfg.steps):
        mine = {k: v for k, v in ours.param_groups[0].items() if k != "params"}
        assert mine == {k: v for k, v in official.param_groups[0].items() if k != "params"}
        for opt, schedule in ((ours, ours_schedule), (official, official_schedule)):
            opt.step()
            schedule.step()
    with pytest.raises(ValueError, match=r"optimizer nystromformer-lra is run_tasks.py's"):
        load_config(task="listops", preset="nystromformer", overrides={"eps": 1e-8})


def test_checkpoints_written_before_the_optimizer_setting_resume(tmp_path):
    """A saved config without ``optimizer`` compares as the default (adamw), not as a changed setting."""
    cfg = load_config(overrides={"steps": 10})
    saved_config = cfg.to_dict()
    del saved_config["optimizer"]
    saved = {"config": saved_config, "meta": {}, "step": 0}
    _, changed = check_resume(saved, cfg, 1, tmp_path)
    assert not changed


def _encoder(structure: str, attention: str, dim: int = 8, attention_dropout: float = 0.0, **model) -> Encoder:
    from attnzoo.tasks import TaskSpec

    task = TaskSpec("t", 64, "tokens", 10, 0, 3, "class", False, 0, "accuracy", None, "")
    options = {"linformer": {"proj_dim": 8, "max_length": 64}, "reformer": {"bucket_size": 8}}.get(attention, {})
    cfg = ModelConfig(
        attention=attention,
        attention_options=options,
        dim=dim,
        num_heads=2,
        dropout=0.0,
        attention_dropout=attention_dropout,
        structure=structure,
        **model,
    )
    return Encoder(task, cfg)


def test_nystromformer_preset_has_the_official_structure():
    """The preset's models share the linformer ``E`` and drop reformer's ``qkv`` bias, as from_official_model."""
    assert load_config(task="listops", preset="nystromformer").model.structure == "nystromformer-lra"
    assert load_config(task="listops", preset="lra").model.structure == "attnzoo"
    official = build(load("linformer")).classifier.encoder.cfg
    assert official.structure == "nystromformer-lra"


def test_shared_linformer_projection_takes_the_sum_of_the_layers_gradients():
    torch.manual_seed(0)
    shared, own = _encoder("nystromformer-lra", "linformer"), _encoder("attnzoo", "linformer")
    own.load_state_dict(shared.state_dict())  # every layer's e_proj now holds the shared E
    assert shared.blocks[0].attn.e_proj is shared.blocks[1].attn.e_proj
    assert own.blocks[0].attn.e_proj is not own.blocks[1].attn.e_proj
    count = sum(p.numel() for p in shared.parameters())
    assert count == sum(p.numel() for p in own.parameters()) - own.blocks[1].attn.e_proj.numel()
    ids = torch.randint(1, 10, (2, 64))
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[1, 40:] = False
    for model in (shared, own):
        model(ids, mask)[0].square().sum().backward()
    summed = own.blocks[0].attn.e_proj.grad + own.blocks[1].attn.e_proj.grad
    assert torch.allclose(shared.blocks[0].attn.e_proj.grad, summed, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(summed, own.blocks[0].attn.e_proj.grad)


def test_reformer_structure_freezes_a_zero_qkv_bias():
    official = _encoder("nystromformer-lra", "reformer")
    for block in official.blocks:
        assert not block.attn.qkv.bias.requires_grad and not block.attn.qkv.bias.any()
    ours = _encoder("attnzoo", "reformer")
    assert all(block.attn.qkv.bias.requires_grad for block in ours.blocks)
    softmax = _encoder("nystromformer-lra", "softmax")  # other mechanisms keep their layout
    assert all(block.attn.qkv.bias.requires_grad for block in softmax.blocks)


@pytest.mark.parametrize("attention", ["softmax", "none", "nystrom", "linformer", "performer", "linear", "reformer"])
def test_official_structure_keeps_the_linear_init_of_the_official_projections(attention):
    """W_q/W_k/W_v/ff of the official model are plain ``nn.Linear``: U(+-1/sqrt(64)), std 1/sqrt(3 * 64)."""
    torch.manual_seed(0)
    official, ours = _encoder("nystromformer-lra", attention, dim=64), _encoder("attnzoo", attention, dim=64)
    bound = 1 / 64**0.5
    for block in official.blocks:
        for linear in (block.attn.qkv, block.attn.proj):
            assert linear.weight.abs().max() <= bound
            assert abs(linear.weight.std().item() - bound / 3**0.5) < 0.004
        assert block.attn.proj.bias.abs().max() <= bound and block.attn.proj.bias.std() > 0.05
        if attention == "reformer":
            assert not block.attn.qkv.bias.any()
        else:
            assert block.attn.qkv.bias.abs().max() <= bound and block.attn.qkv.bias.std() > 0.05
    for block in ours.blocks:
        for linear in (block.attn.qkv, block.attn.proj):
            assert abs(linear.weight.std().item() - 0.02) < 0.002 and not linear.bias.any()


@pytest.mark.parametrize("attention", ["linformer", "reformer", "softmax"])
def test_official_structure_drops_attention_probabilities_in_softmax_only(attention):
    """The official linformer and HF LSH kernels have no attention dropout; SoftmaxAttention has."""
    ids = torch.randint(1, 10, (2, 64))
    mask = torch.ones(2, 64, dtype=torch.bool)
    for structure in ("nystromformer-lra", "attnzoo"):
        torch.manual_seed(0)
        model = _encoder(structure, attention, attention_dropout=0.5).train()
        if attention == "reformer":  # the same rotations in both calls
            for block in model.blocks:
                block.attn.options = dataclasses.replace(block.attn.options, hash_seed=0)
        first, second = model(ids, mask)[0], model(ids, mask)[0]
        random = structure == "attnzoo" or attention == "softmax"
        assert not torch.allclose(first, second) if random else torch.equal(first, second)


def test_structure_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"model.structure must be one of attnzoo, nystromformer-lra; got 'lra'"):
        _encoder("lra", "softmax")
    layers = [
        {"name": "linformer", "proj_dim": 8, "max_length": 64},
        {"name": "linformer", "proj_dim": 4, "max_length": 64},
    ]
    with pytest.raises(
        ValueError, match=r"shares one linformer E across layers, but their shapes differ: \(2, 8, 64\)"
    ):
        _encoder("nystromformer-lra", "linformer", layer_attention=layers)
    with pytest.raises(ValueError, match=r"structure nystromformer-lra needs attentions with qkv and proj .* 'psf'"):
        _encoder("nystromformer-lra", "psf")


@pytest.mark.parametrize("case", KINDS)
def test_fresh_model_draws_every_tensor_like_the_official_init(case):
    """A fresh ``from_official_model`` (no state_dict) against the official model's own init (the fixture's
    ``state_dict``, saved before any step): per tensor the same spread, constants (norms, frozen biases) equal."""
    fixture = load(case)
    official = build(fixture)
    torch.manual_seed(0)
    fresh = dict(from_official_model("nystromformer-lra", config=fixture["config"]).state_dict())
    compared = 0
    for name, drawn in official.state_dict().items():
        ours = fresh[name]
        if not drawn.dtype.is_floating_point or drawn.numel() < 64:
            continue
        if drawn.std() == 0:
            assert torch.equal(ours, drawn), name
        else:
            assert abs(ours.std() / drawn.std() - 1) < 0.3, (name, ours.std().item(), drawn.std().item())
        compared += 1
    assert compared >= 10
