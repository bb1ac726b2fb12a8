"""Whole official models through ``attnzoo.from_official_model``: PSFNet (SparseFactorization) and the butterfly
LRA classifier (Solving-LRA-PathX), against outputs of the official code.

Fixtures ``tests/fixtures/butterfly/*.pt``: tsumansapkota/Solving-LRA-PathX @ 41fb9e1, ``LRA/code``
``model_wrapper.ModelForSC`` (``ModelForSCDual`` for retrieval) built from a ``model_config`` made as its
``run_tasks.py`` makes it (``lra_config.py``'s listops/retrieval model section shrunk: D 16, 2 heads of 8,
hidden 24, vocab 12, max_seq_len 30 -> 32; CLI defaults: dropouts 0, ``mixed_precision`` True, ``attn_type``
``butterfly-4`` (3 layers, strides 1, 4, 8: the cap rule) or ``butterfly-8``, ``nystrom-4``), weights drawn
after ``torch.manual_seed(42)`` then each shifted by 0.3 N(0, 1) noise so that the logits differ clearly;
run on CPU in eval mode on a batch of two, the second right-padded with id 0 (``mask = ids != 0`` as in
``LRADataset``); the logits are ``seq_classifer``'s output during the official ``forward``.

Fixtures (``tests/fixtures/psf/*.pt``): the official ``PSFNet`` classes of RuslanKhalitov/SparseFactorization
@ d8ade2e (``LRA/psf.py``, ``SyntheticExperiments/psf.py``, ``attention_block.py``), built after
``torch.manual_seed(42)`` from the tiny configs saved with them, run on CPU in eval mode with
``torch_sparse.spmm`` replaced by its own formula in plain torch (``index_select`` of the columns, times the
values, ``index_add_`` over the rows); saved: config, ``state_dict()``, inputs and ``net(inputs)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import attnzoo

FIXTURES = Path(__file__).parent.parent / "fixtures"
VARIANT = {
    "lra_listops": "lra",
    "lra_cifar10": "lra",
    "synth_order": "synth",
    "synth_adding": "synth",
    "block": "block",
}


def load(topic: str, name: str) -> dict[str, Any]:
    return torch.load(FIXTURES / topic / f"{name}.pt")


def assert_close(got: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    assert got.shape == expected.shape
    err = (got - expected).abs().max().item()
    assert err <= rel * expected.abs().max().item(), f"max abs error {err:.3e} vs |expected| {expected.abs().max():.3e}"


def psf_model(name: str, **changes: Any) -> torch.nn.Module:
    d = load("psf", name)
    config = {**d["config"], "variant": VARIANT[name], **changes}
    return attnzoo.from_official_model("sparse-factorization", config=config, state_dict=d["state_dict"])


@pytest.mark.parametrize("name", list(VARIANT))
def test_psfnet_equals_the_official_model(name: str) -> None:
    d = load("psf", name)
    model = psf_model(name)
    assert not model.training
    with torch.no_grad():
        out = model(d["inputs"])
    assert_close(out, d["output"])


def test_psf_block_variant_layer_equals_the_official_mixer() -> None:
    """``from_official("sparse-factorization", "block")`` takes attention_block.PSFNet's constructor arguments:
    n_W = ceil(log2 24) = 5 factors whose networks are embedding_size wide; on the official block's mixer
    input (embedding + apc_embedding) it returns the official block's output."""
    d = load("psf", "block")
    layer = attnzoo.from_official("sparse-factorization", "block", dim=8, num_heads=1, args=d["config"])
    assert layer.options.num_factors == 5 and layer.options.factor_hidden == 8 and layer.value_dim == 8
    layer = attnzoo.from_official(
        "sparse-factorization", "block", dim=8, num_heads=1, args=d["config"], state_dict=d["state_dict"]
    ).eval()
    with torch.no_grad():
        assert_close(layer(d["mixer_input"]), d["output"])


def test_psf_block_errors() -> None:
    d = load("psf", "block")
    with pytest.raises(ValueError, match=r"variant 'block' is attention_block\.PSFNet"):
        attnzoo.from_official("sparse-factorization", "psf", dim=8, num_heads=1, args={"variant": "block"})
    with pytest.raises(ValueError, match=r"max_seq_len must be an int >= 2 .* got 1"):
        attnzoo.from_official("sparse-factorization", "block", dim=8, num_heads=1, args={"max_seq_len": 1})
    with pytest.raises(ValueError, match=r"unknown argument\(s\) n_W"):
        attnzoo.from_official("sparse-factorization", "block", dim=8, num_heads=1, args={**d["config"], "n_W": 3})


def test_psfnet_drops_only_the_tensors_the_official_forward_never_reads() -> None:
    """The adding problem has an ``embedding`` and a ``pos_embedding`` it never uses: dropped, not loaded."""
    model = psf_model("synth_adding")
    assert isinstance(model.embed, torch.nn.Linear)
    assert not any(name.startswith("positions") for name, _ in model.named_parameters())
    d = load("psf", "lra_listops")
    with pytest.raises(ValueError, match=r"unexpected official PSFNet tensors \['bogus.weight'\]"):
        attnzoo.from_official_model(
            "sparse-factorization", config=d["config"], state_dict={**d["state_dict"], "bogus.weight": torch.zeros(1)}
        )


def test_psfnet_keeps_the_official_padding_row_and_dropouts() -> None:
    model = psf_model("lra_listops")
    assert model.embed.padding_idx == 7  # listops / imdb: vocab - 2
    assert psf_model("lra_cifar10").embed.padding_idx is None
    cifar = psf_model("lra_cifar10")
    assert (cifar.drop_in.p, cifar.mixer.dropout, cifar.drop_out.p) == (0.0, 0.2, 0.8)
    block = psf_model("block")
    assert (block.drop_in.p, block.mixer.dropout, block.drop_out.p) == (0.1, 0.1, 0.1)


def test_psfnet_config_errors() -> None:
    d = load("psf", "lra_listops")
    config = {k: v for k, v in d["config"].items() if k != "n_W"}
    with pytest.raises(ValueError, match="sparse-factorization lra PSFNet config is missing n_W"):
        attnzoo.from_official_model("sparse-factorization", config=config)
    with pytest.raises(ValueError, match="variant must be one of lra, synth, block, got 'x'"):
        attnzoo.from_official_model("sparse-factorization", config={**d["config"], "variant": "x"})
    with pytest.raises(ValueError, match="problem must be one of listops, imdb, cifar10, pathfinder"):
        attnzoo.from_official_model("sparse-factorization", config={**d["config"], "problem": "text"})
    with pytest.raises(ValueError, match=r"head must be \['linear'\] or \['non-linear', hidden\]"):
        attnzoo.from_official_model("sparse-factorization", config={**d["config"], "head": ["mlp"]})
    order = load("psf", "synth_order")["config"]
    with pytest.raises(ValueError, match="problem 'order' with add_init_linear_layer False"):
        attnzoo.from_official_model(
            "sparse-factorization", config={**order, "variant": "synth", "add_init_linear_layer": True}
        )
    model = psf_model("lra_listops")
    with pytest.raises(ValueError, match=r"PSFNet mixes exactly 20 tokens \(official n_vec / max_seq_len\), got 19"):
        model(d["inputs"][:, :19])


def test_psfnet_synth_reads_the_training_config_names() -> None:
    """``synthetic_training_config.py`` says ``dim`` (psf_training.py passes it as embedding_size) and has no
    ``n_W`` (psf_training.py: log2 n_vec): both read as the script passes them."""
    d = load("psf", "synth_order")
    config = {k: v for k, v in d["config"].items() if k not in ("embedding_size", "n_W")}
    config.update(dim=d["config"]["embedding_size"], variant="synth")
    model = attnzoo.from_official_model("sparse-factorization", config=config, state_dict=d["state_dict"])
    with torch.no_grad():
        assert_close(model(d["inputs"]), d["output"])


def butterfly_model(name: str, **changes: Any) -> torch.nn.Module:
    d = load("butterfly", name)
    config = {**d["config"], **({"task": "retrieval"} if name == "retrieval" else {}), **changes}
    return attnzoo.from_official_model("solving-lra-pathx", config=config, state_dict=d["state_dict"])


@pytest.mark.parametrize("name", ["lra_mean", "lra_cls", "lra_nystrom"])
def test_solving_lra_pathx_classifier_equals_the_official_model(name: str) -> None:
    d = load("butterfly", name)
    model = butterfly_model(name)
    assert not any(module.training for module in model.modules())
    with torch.no_grad():
        assert_close(model(d["tokens"], d["mask"]), d["logits"])


def test_solving_lra_pathx_dual_model_equals_the_official_model() -> None:
    d = load("butterfly", "retrieval")
    with torch.no_grad():
        logits = butterfly_model("retrieval")(d["tokens_0"], d["mask_0"], d["tokens_1"], d["mask_1"])
    assert_close(logits, d["logits"])


def test_butterfly_layers_cycle_the_official_strides() -> None:
    """N = 32, b = 4: n_stage = ceil(log_4 32) = 3, strides 1, 4 and 16 -> capped to ceil(32 / 4) = 8; the
    softmax layers of the same weights (the official sub_attn_type alone) give other logits."""
    from attnzoo.sparse.structured import butterfly_geometry

    model = butterfly_model("lra_mean")
    options = [block.attn.options for block in model.classifier.encoder.blocks]
    strides = [butterfly_geometry(32, o.block_size, o.stage, float_stage_count=o.float_stage_count)[0] for o in options]
    assert strides == [1, 4, 8]
    assert all(o.max_seq_len == 32 for o in options)
    d = load("butterfly", "lra_mean")
    softmax = attnzoo.from_official_model(
        "nystromformer-lra", config={**d["config"], "attn_type": "softmax"}, state_dict=d["state_dict"]
    )
    with torch.no_grad():
        gap = (softmax(d["tokens"], d["mask"]) - d["logits"]).abs().max()
    assert gap > 0.05 * d["logits"].abs().max()


def test_solving_lra_pathx_dropouts() -> None:
    """The fork's three dropouts: embeddings, inside the MLP, after attention and MLP (all off in eval)."""
    model = butterfly_model("lra_nystrom")
    encoder = model.classifier.encoder
    assert encoder.drop.p == 0.1
    for block in encoder.blocks:
        assert (block.mlp.net[2].p, block.mlp.net[4].p, block.drop.p) == (0.2, 0.3, 0.3)
    assert butterfly_model("lra_mean").classifier.encoder.blocks[0].attn.dropout == 0.1  # attention_dropout


def test_solving_lra_pathx_config_errors() -> None:
    d = load("butterfly", "lra_mean")
    config = {k: v for k, v in d["config"].items() if k != "mlp_dropout"}
    with pytest.raises(ValueError, match="solving-lra-pathx config is missing mlp_dropout"):
        attnzoo.from_official_model("solving-lra-pathx", config=config)
    with pytest.raises(ValueError, match="tied_weights with butterfly attention"):
        attnzoo.from_official_model("solving-lra-pathx", config={**d["config"], "tied_weights": True})
    with pytest.raises(ValueError, match="sub_attn_type 'linear': only 'softmax'"):
        attnzoo.from_official_model("solving-lra-pathx", config={**d["config"], "sub_attn_type": "linear"})
