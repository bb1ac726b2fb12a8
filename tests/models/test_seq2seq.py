"""Encoder-decoder: shapes, masks, teacher forcing, greedy decoding with and without cache, config errors."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import attnzoo
from attnzoo import tasks
from attnzoo.models import ModelConfig, build_model
from attnzoo.models.seq2seq import BOS_ID, EOS_ID, Seq2Seq, can_decode
from attnzoo.tasks.dataset import TaskDataset, collate
from attnzoo.tasks.synthetic import seq2seq as task_module
from attnzoo.train import load_config, train
from attnzoo.train.sequence_parallel import SequenceParallel, attach

TINY = ModelConfig(dim=16, num_heads=2, num_layers=2, mlp_dim=32, dropout=0.0, attention_dropout=0.0)
SPEC = tasks.get("reverse", max_length=8)


def batch_of(operation: str = "reverse", size: int = 4, seed: int = 0, **opts: int) -> dict[str, torch.Tensor]:
    o = task_module.Seq2SeqOptions(**{"max_length": 8, **opts})
    arrays = task_module.generate(o, operation, size, np.random.default_rng(seed))
    data = TaskDataset(arrays, tasks.get(operation, **{"max_length": 8, **opts}))
    return collate([data[i] for i in range(size)])


def model_of(cfg: ModelConfig = TINY, seed: int = 0) -> Seq2Seq:
    torch.manual_seed(seed)
    model = build_model(SPEC, cfg)
    assert isinstance(model, Seq2Seq)
    return model.eval()


def test_task_layout_and_ids_agree_with_the_model() -> None:
    assert (task_module.BOS_ID, task_module.EOS_ID) == (BOS_ID, EOS_ID)
    b = batch_of(size=6)
    for i in range(6):
        n = int(b["mask"][i].sum())
        src = b["input_ids"][i, :n]
        assert b["mask2"][i].sum() == n + 1 and b["input_ids2"][i, 0] == BOS_ID
        assert torch.equal(b["label"][i, :n], src.flip(0)) and b["label"][i, n] == EOS_ID
        assert torch.equal(b["input_ids2"][i, 1 : n + 1], b["label"][i, :n])
        assert (b["label"][i, n + 1 :] == -100).all() and (b["input_ids"][i, n:] == 0).all()
    s = batch_of("sort", size=3)
    n = int(s["mask"][0].sum())
    assert torch.equal(s["label"][0, :n], s["input_ids"][0, :n].sort().values)
    spec = tasks.get("sort")
    assert (spec.seq_len, spec.vocab_size, spec.target, spec.paired) == (17, 13, "seq2seq", True)
    with pytest.raises(ValueError, match=r"min_length \(9\) must be <= max_length \(8\)"):
        task_module.Seq2SeqOptions(min_length=9, max_length=8)
    with pytest.raises(ValueError, match="operation must be one of reverse, sort"):
        task_module.generate(task_module.Seq2SeqOptions(), "shuffle", 2, np.random.default_rng(0))


def test_shapes_loss_and_padding_invariance() -> None:
    model = model_of()
    b = batch_of()
    logits = model(b)
    assert logits.shape == (4, 9, SPEC.num_classes)
    loss, correct, count = model.loss(logits, b)
    assert count == (b["label"] != -100).sum() and 0 <= correct <= count and loss > 0
    # padding in the source and the decoder input changes no real output
    noisy = dict(b)
    noisy["input_ids"] = torch.where(b["mask"], b["input_ids"], 7)
    noisy["input_ids2"] = torch.where(b["mask2"], b["input_ids2"], 5)
    out = model(noisy)
    assert torch.allclose(out[b["mask2"]], logits[b["mask2"]], atol=1e-6)
    # the decoder is causal: changing target token t changes no logit before t
    later = dict(b)
    later["input_ids2"] = b["input_ids2"].clone()
    later["input_ids2"][:, 3] = 4
    assert torch.allclose(model(later)[:, :3], logits[:, :3], atol=1e-6)
    # ... and the decoder reads the source through cross-attention
    other = dict(b)
    other["input_ids"] = torch.where(b["mask"], 3 + (b["input_ids"] - 2) % 10, 0)
    assert not torch.allclose(model(other)[:, 0], logits[:, 0], atol=1e-4)


def test_teacher_forcing_loss_decreases() -> None:
    torch.manual_seed(0)
    model = build_model(SPEC, TINY).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    b = batch_of(size=16, seed=1)
    losses = []
    for _ in range(30):
        loss, _, _ = model.loss(model(b), b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize(
    ("decoder", "cross", "options"),
    [
        ("softmax", "softmax", {}),
        ("performer", "linear", {"decoder_attention_options": {"num_features": 16, "seed": 0}}),
        ("local", "performer", {"decoder_attention_options": {"window_size": 3}}),
    ],
)
def test_greedy_decoding_with_cache_equals_recompute(decoder: str, cross: str, options: dict) -> None:
    cfg = replace(TINY, decoder_attention=decoder, cross_attention=cross, decoder_layers=3, **options)
    model = model_of(cfg)
    for block in model.blocks:  # sharper logits than the 0.02 init, so the argmax is not a coin toss
        torch.nn.init.normal_(block.mlp.net[3].weight, std=0.5)
    assert all(can_decode(block.self_attn) for block in model.blocks)
    b = batch_of(size=5, seed=2)
    cached = model.generate(b["input_ids"], b["mask"])
    again = model.generate(b["input_ids"], b["mask"], cache=False)
    assert cached.shape[0] == 5 and 1 <= cached.shape[1] <= SPEC.seq_len
    assert torch.equal(cached, again)
    assert len(set(cached.flatten().tolist())) > 1  # not a constant sequence
    # the decoded tokens are the argmax of teacher forcing on them (BOS + the decoded prefix)
    ids = torch.cat([torch.full((5, 1), BOS_ID), cached[:, :-1]], 1)
    tf = dict(b, input_ids2=ids, mask2=torch.ones_like(ids, dtype=torch.bool))
    logits = model(tf)
    prefix = torch.cat([torch.ones(5, 1, dtype=torch.bool), (cached[:, :-1] != EOS_ID).cumprod(1).bool()], 1)
    prefix &= torch.cat([torch.ones(5, 1, dtype=torch.bool), cached[:, :-1] != 0], 1)
    assert torch.equal(logits.argmax(-1)[prefix], cached[prefix])


def test_generation_metrics_count_exact_sequences() -> None:
    model = model_of()
    b = batch_of(size=3)
    perfect = torch.where(b["label"] == -100, 0, b["label"])
    model.generate = lambda source, mask, max_len=None, cache=True: perfect  # type: ignore[method-assign]
    counts = model.generation_metrics(b)
    scored = (b["label"] != -100).sum()
    assert counts == {"exact_match": 3, "sequences": 3, "token_accuracy": scored, "tokens": scored}
    wrong = perfect.clone()
    wrong[0, 0] = 3 if wrong[0, 0] != 3 else 4
    wrong[1] = 0  # nothing decoded
    model.generate = lambda source, mask, max_len=None, cache=True: wrong[:, :5]  # type: ignore[method-assign]
    counts = model.generation_metrics(b)
    row_2_fits = bool((b["label"][2, 5:] == -100).all())  # its target and EOS fit in the 5 decoded tokens
    assert counts["exact_match"] == int(row_2_fits) and counts["sequences"] == 3
    assert counts["token_accuracy"] == ((wrong[:, :5] == b["label"][:, :5]) & (b["label"][:, :5] != -100)).sum()


def test_config_errors_name_the_field() -> None:
    non_causal = next(s.name for s in attnzoo.available() if not s.capabilities.causal)
    with pytest.raises(ValueError, match=f"model.decoder_attention: '{non_causal}' has no causal mode"):
        build_model(SPEC, replace(TINY, decoder_attention=non_causal))
    with pytest.raises(ValueError, match=r"model.cross_attention: 'local' has no cross-attention mode; .*softmax"):
        build_model(SPEC, replace(TINY, cross_attention="local"))
    with pytest.raises(ValueError, match=r"model.cross_attention: unknown mechanism 'nope'"):
        build_model(SPEC, replace(TINY, cross_attention="nope"))
    with pytest.raises(ValueError, match=r"model.decoder_layers must be an int >= 0 \(0 = num_layers\), got -1"):
        build_model(SPEC, replace(TINY, decoder_layers=-1))
    with pytest.raises(ValueError, match=r"needs model.pooling != 'cls'"):
        build_model(SPEC, replace(TINY, pooling="cls"))
    with pytest.raises(ValueError, match="unknown option"):
        build_model(SPEC, replace(TINY, cross_attention_options={"bogus": 1}))
    model = build_model(SPEC, replace(TINY, decoder_layers=3))
    assert len(model.blocks) == 3 and len(model.encoder.blocks) == 2


def test_harness_trains_and_reports_greedy_metrics(tmp_path) -> None:
    overrides = {
        "train_size": 64,
        "dev_size": 16,
        "test_size": 16,
        "steps": 3,
        "eval_every": 3,
        "warmup_steps": 1,
        "batch_size": 8,
        "eval_batches": 2,
        "cache_dir": str(tmp_path / "cache"),
        "out_dir": str(tmp_path / "run"),
        "progress": False,
        "tensorboard": False,
        "task_options": {"max_length": 6},
    }
    cfg = load_config(None, overrides, task="reverse")  # configs/mini/reverse.yaml
    assert (cfg.model.decoder_attention, cfg.model.cross_attention) == ("softmax", "softmax")
    results = train(cfg)
    assert type(build_model(tasks.get("reverse"), cfg.model)) is Seq2Seq
    assert 0.0 <= results["exact_match"] <= 1.0 and 0.0 <= results["token_accuracy"] <= 1.0
    dev = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"exact_match", "token_accuracy"} <= set(next(r for r in dev if r["split"] == "dev"))


def test_sequence_parallel_refuses_the_encoder_decoder() -> None:
    model = build_model(SPEC, replace(TINY, attention="dilated"))
    sp = SequenceParallel(size=2, group=None, rank=0, data_rank=0, data_world=1)
    with pytest.raises(ValueError, match=r"cannot split this model: a paired \(two-input\) task: retrieval or enc"):
        attach(model, sp)
