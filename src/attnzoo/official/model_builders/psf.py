"""``from_official_model("sparse-factorization", ...)``: the whole ``PSFNet`` of RuslanKhalitov/SparseFactorization.

Three official models share one layout (the ``PSFNet`` class of each folder below), selected by
``config["variant"]``:

* ``"lra"`` (default): ``LRA/psf.py``; ``config`` = the model section of ``LRA/psf_training_config.py``
  (the constructor's keyword arguments). Call ``model(tokens)``, ``tokens: (B, n_vec)`` long with the
  CLS id (vocab - 1) already first when ``pooling_type`` is CLS (the training scripts prepend it);
  returns logits ``(B, n_class)``. No mask: the official model mixes PAD tokens like the others.
* ``"synth"``: ``SyntheticExperiments/psf.py``; ``config`` = the PSF model section of
  ``synthetic_training_config.py`` plus ``n_vec`` (``dim`` is read as ``embedding_size`` and ``n_W``
  defaults to ``log2(n_vec)``, as ``psf_training.py`` passes them). Call ``model(x)`` with what the
  official model takes: ``(B, n_vec, 1)`` long ids for ``problem="order"``, ``(B, n_vec, 2)`` floats
  through ``init_linear`` for ``"adding"``; returns ``(B, n_class)``; always flattens.
* ``"block"``: ``attention_block.py``; ``config`` = its constructor's arguments. Call ``model(tokens)``,
  ``(B, max_seq_len)`` long; returns the mixed tokens ``(B, max_seq_len, embedding_size)``.

The mixer is :func:`attnzoo.from_official`'s ``psf`` (``block``) entry; embeddings, positions
(:class:`~attnzoo.models.positions.LearnedPositions`) and head around it (:class:`PSFNetModel`).

| official tensor | attnzoo tensor |
| --- | --- |
| `embedding.weight` | `embed.weight` (listops / imdb: `padding_idx = vocab_size - 2`, as the official) |
| `init_linear.*` (synthetic adding) | `embed.*` |
| `pos_embedding.weight`, `apc_embedding.weight` (block) | `positions.weight` |
| `fs.{m}.network.{0,2}.*`, `g.network.{0,2}.*` | `mixer.fs.{m}.network.{0,2}.*`, `mixer.g.network.{0,2}.*` |
| `final.*` (linear head), `final.{0,2}.*` (non-linear head) | `head.*`, `head.{0,2}.*` |

Departures and reproduced quirks:

* Official tensors the official forward never reads (``pos_embedding`` without ``use_pos_embedding``,
  ``embedding`` of the adding problem) are accepted and dropped; the chord pattern (``chord_indicies``,
  not in the state dict) is rebuilt from ``n_vec``.
* PAD tokens are mixed like real ones (P1) and ``n_W`` links past N alias (P2), as the official.
* ``dropout2_p`` is the mixer's attention dropout (on V0, whose dropped copy is also the residual, P4);
  ``dropout1_p`` / ``dropout3_p`` act before / after the mixer. ``use_cuda`` is not read (the device is
  the module's).
* The input length must be ``n_vec`` (``max_seq_len``), as the official chord pattern and position ids.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from attnzoo.mechanisms.psf import block_factor_count
from attnzoo.models.positions import LearnedPositions, NoPositions
from attnzoo.official.models import register_official_model
from attnzoo.official.registry import from_official
from attnzoo.official.weights import load_converted

__all__ = ["PSFNetModel"]

_LRA_PROBLEMS = {"listops": True, "imdb": True, "cifar10": False, "pathfinder": False}  # -> padding_idx vocab-2
_SYNTH_PROBLEMS = {"order": False, "adding": True}  # -> add_init_linear_layer the forward needs


class PSFNetModel(nn.Module):
    """Embedding, positions, dropout, the PSF mixer, dropout, then CLS/flatten pooling and a head (or none).

    ``forward(inputs) -> (B, n_class)`` logits, or the mixed tokens ``(B, N, C)`` without a head.
    """

    def __init__(
        self,
        embed: nn.Module,
        positions: nn.Module,
        mixer: nn.Module,
        head: nn.Module | None,
        *,
        length: int,
        pooling: str,
        dropout_in: float,
        dropout_out: float,
        squeeze_ids: bool,
    ) -> None:
        super().__init__()
        self.embed, self.positions, self.mixer, self.head = embed, positions, mixer, head
        self.length, self.pooling, self.squeeze_ids = length, pooling, squeeze_ids
        self.drop_in, self.drop_out = nn.Dropout(dropout_in), nn.Dropout(dropout_out)

    def forward(self, inputs: Tensor) -> Tensor:
        """``inputs: (B, N)`` ids, ``(B, N, 1)`` ids (synthetic order) or ``(B, N, F)`` features -> outputs.

        Raises:
            ValueError: ``N`` differs from the official fixed length (chord pattern and position table).
        """
        if inputs.shape[1] != self.length:
            raise ValueError(
                f"PSFNet mixes exactly {self.length} tokens (official n_vec / max_seq_len), got {inputs.shape[1]}"
            )
        x = self.embed(inputs)
        if self.squeeze_ids:
            x = x.squeeze(-2)
        v = self.drop_out(self.mixer(self.drop_in(self.positions(x))))
        if self.head is None:
            return v
        return self.head(v[:, 0] if self.pooling == "CLS" else v.flatten(1))


def _require(config: Mapping[str, Any], keys: tuple[str, ...], what: str) -> None:
    missing = [key for key in keys if key not in config]
    if missing:
        raise ValueError(f"{what} config is missing {', '.join(missing)}")


def _token_embedding(vocab: int, dim: int, padding: bool, uniform: bool) -> nn.Embedding:
    """``nn.Embedding`` as the official one: ``padding_idx = vocab - 2`` (listops/imdb), U(-0.1, 0.1) if asked."""
    embed = nn.Embedding(vocab, dim, padding_idx=vocab - 2 if padding else None)
    if uniform:
        nn.init.uniform_(embed.weight, -0.1, 0.1)
    return embed


def _positions(used: bool, length: int, dim: int) -> nn.Module:
    """The official ``pos_embedding`` (nn.Embedding default init N(0, 1)) when used, else nothing."""
    if not used:
        return NoPositions()
    positions = LearnedPositions(length, dim)
    nn.init.normal_(positions.weight)
    return positions


def _head(head: Any, in_dim: int, n_class: int) -> nn.Module:
    """``final``: ``Linear`` (``['linear']``) or ``Linear -> GELU -> Linear`` (``['non-linear', hidden]``)."""
    if head[0] == "linear":
        return nn.Linear(in_dim, n_class)
    if head[0] == "non-linear" and len(head) == 2:
        return nn.Sequential(nn.Linear(in_dim, head[1]), nn.GELU(), nn.Linear(head[1], n_class))
    raise ValueError(f"head must be ['linear'] or ['non-linear', hidden], got {head!r}")


def _with_dropout(mixer: nn.Module, dropout2: float) -> nn.Module:
    """``mixer`` with the official ``dropout2_p`` (on V0, training only) as its attention dropout."""
    mixer.dropout = float(dropout2)
    return mixer


def _mixer(config: Mapping[str, Any], variant: str, n_w: int, dropout2: float) -> nn.Module:
    """The ``psf`` official entry's mixer (``Ws`` / ``V`` networks, chord factors) of a PSFNet config."""
    args = {key: config[key] for key in ("Ws", "V", "n_channels_V", "use_residuals")}
    args.update(n_vec=config["n_vec"], n_W=n_w, variant=variant)
    dim = config["embedding_size"]
    return _with_dropout(from_official("sparse-factorization", "psf", dim=dim, num_heads=1, args=args), dropout2)


def _lra(config: Mapping[str, Any]) -> tuple[PSFNetModel, bool, bool]:
    keys = ("vocab_size", "embedding_size", "n_vec", "n_W", "Ws", "V", "n_channels_V", "n_class", "pooling_type")
    keys += ("head", "use_residuals", "dropout1_p", "dropout2_p", "dropout3_p", "init_embedding_weights")
    _require(config, (*keys, "use_pos_embedding", "problem"), "sparse-factorization lra PSFNet")
    if config["problem"] not in _LRA_PROBLEMS:
        raise ValueError(
            f"problem must be one of {', '.join(_LRA_PROBLEMS)} (the official embeddings), got {config['problem']!r}"
        )
    if config["pooling_type"] not in ("CLS", "FLATTEN"):
        raise ValueError(f"pooling_type must be 'CLS' or 'FLATTEN', got {config['pooling_type']!r}")
    dim, length, channels = config["embedding_size"], config["n_vec"], config["n_channels_V"]
    pooled = channels if config["pooling_type"] == "CLS" else length * channels
    model = PSFNetModel(
        _token_embedding(
            config["vocab_size"], dim, _LRA_PROBLEMS[config["problem"]], bool(config["init_embedding_weights"])
        ),
        _positions(bool(config["use_pos_embedding"]), length, dim),
        _mixer(config, "lra", config["n_W"], config["dropout2_p"]),
        _head(config["head"], pooled, config["n_class"]),
        length=length,
        pooling=config["pooling_type"],
        dropout_in=config["dropout1_p"],
        dropout_out=config["dropout3_p"],
        squeeze_ids=False,
    )
    return model, True, bool(config["use_pos_embedding"])


def _synth(config: Mapping[str, Any]) -> tuple[PSFNetModel, bool, bool]:
    config = dict(config)
    if "embedding_size" not in config and "dim" in config:
        config["embedding_size"] = config["dim"]  # psf_training.py passes embedding_size=cfg["dim"]
    keys = ("vocab_size", "add_init_linear_layer", "embedding_size", "n_vec", "Ws", "V", "n_channels_V", "n_class")
    _require(
        config, (*keys, "head", "use_residuals", "use_pos_embedding", "problem"), "sparse-factorization synth PSFNet"
    )
    problem, linear_in = config["problem"], bool(config["add_init_linear_layer"])
    if problem not in _SYNTH_PROBLEMS or _SYNTH_PROBLEMS[problem] != linear_in:
        raise ValueError(
            "the synthetic PSFNet runs problem 'order' with add_init_linear_layer False or 'adding' with True; "
            f"got problem={problem!r}, add_init_linear_layer={linear_in}"
        )
    if config["head"][0] != "linear":
        raise ValueError(f"the synthetic PSFNet has only the ['linear'] head, got {config['head']!r}")
    dim, length = config["embedding_size"], config["n_vec"]
    n_w = config.get("n_W", int(math.log2(length)))
    model = PSFNetModel(
        nn.Linear(2, dim) if linear_in else _token_embedding(config["vocab_size"], dim, False, False),
        _positions(bool(config["use_pos_embedding"]), length, dim),
        _mixer(config, "synth", n_w, 0.0),
        nn.Linear(length * config["n_channels_V"], config["n_class"]),
        length=length,
        pooling="FLATTEN",
        dropout_in=0.0,
        dropout_out=0.0,
        squeeze_ids=not linear_in,
    )
    return model, not linear_in, bool(config["use_pos_embedding"])


def _block(config: Mapping[str, Any]) -> tuple[PSFNetModel, bool, bool]:
    keys = ("vocab_size", "embedding_size", "max_seq_len", "use_residuals", "dropout1_p", "dropout2_p", "dropout3_p")
    _require(config, keys, "sparse-factorization block PSFNet")
    args = {key: config[key] for key in keys}
    dim, length = config["embedding_size"], config["max_seq_len"]
    block_factor_count(length)  # validates max_seq_len before anything is built
    model = PSFNetModel(
        _token_embedding(config["vocab_size"], dim, False, False),
        _positions(True, length, dim),
        _with_dropout(
            from_official("sparse-factorization", "block", dim=dim, num_heads=1, args=args), args["dropout2_p"]
        ),
        None,
        length=length,
        pooling="none",
        dropout_in=config["dropout1_p"],
        dropout_out=config["dropout3_p"],
        squeeze_ids=False,
    )
    return model, True, True


_VARIANTS = {"lra": _lra, "synth": _synth, "block": _block}


def convert_psfnet_model(
    state_dict: Mapping[str, Tensor], *, token_embedding: bool, positions: bool
) -> dict[str, Tensor]:
    """Official ``PSFNet`` names to :class:`PSFNetModel` names.

    ``embedding`` / ``init_linear`` -> ``embed``, ``pos_embedding`` / ``apc_embedding`` -> ``positions``,
    ``fs.*`` / ``g.*`` -> ``mixer.*``, ``final`` -> ``head``; ``embedding`` without ``token_embedding``
    and the position table without ``positions`` are unused by the official forward and dropped.

    Raises:
        ValueError: a tensor no official PSFNet has (named).
    """
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        prefix, _, rest = key.partition(".")
        if prefix == "embedding":
            if token_embedding:
                out[f"embed.{rest}"] = value
        elif prefix == "init_linear":
            out[f"embed.{rest}"] = value
        elif prefix in ("pos_embedding", "apc_embedding"):
            if positions:
                out["positions.weight"] = value
        elif prefix in ("fs", "g"):
            out[f"mixer.{key}"] = value
        elif prefix == "final":
            out[f"head.{rest}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unexpected official PSFNet tensors {sorted(unknown)}")
    return out


@register_official_model("sparse-factorization")
def build_psfnet(config: Mapping[str, Any], state_dict: Mapping[str, Tensor] | None) -> nn.Module:
    """The attnzoo :class:`PSFNetModel` of an official ``PSFNet`` config (variant ``lra``, ``synth`` or ``block``).

    Raises:
        ValueError: an unknown variant, a missing or unsupported config value, or weights that do not fit.
    """
    variant = config.get("variant", "lra")
    if variant not in _VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(_VARIANTS)}, got {variant!r}")
    model, token_embedding, positions = _VARIANTS[variant](config)
    if state_dict is not None:
        converted = convert_psfnet_model(state_dict, token_embedding=token_embedding, positions=positions)
        load_converted(model, converted, strict=True)
    return model
