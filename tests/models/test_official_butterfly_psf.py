"""Whole official models through ``attnzoo.from_official_model``: PSFNet (SparseFactorization) and the butterfly
LRA classifier (Solving-LRA-PathX), against outputs of the official code.

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
