"""``attnzoo generate``: sample text from a byte-level causal LM checkpoint, streaming bytes as they come.

The checkpoint must hold a causal :class:`~attnzoo.models.CausalLM` (``model.causal: true``) trained on a
byte-level language-model task (``bytes-lm`` or any task with byte inputs ``byte + 1`` and 256 next-byte
classes). The prompt's UTF-8 bytes go through :meth:`CausalLM.prefill` once; every new byte is sampled
from the last logits and fed back through :meth:`CausalLM.step`, which costs O(decoding state) per byte.

Sampling: ``temperature == 0`` is greedy (argmax), as is ``top_k == 1``; otherwise the logits are
divided by the temperature, all but the ``top_k`` largest are dropped (``top_k == 0`` keeps all), and
a byte is drawn with a ``torch.Generator`` seeded with ``seed`` (the same seed gives the same text).
Generation stops after ``max_new_tokens`` bytes or when the model's position table is full: a model
of maximum length L reads at most L bytes, so it continues a prompt of T bytes by at most ``L + 1 - T``.
"""

from __future__ import annotations

import argparse
import codecs
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import torch
from torch import Tensor

from attnzoo.checkpoints import load_checkpoint, model_from_checkpoint
from attnzoo.models import CausalLM
from attnzoo.options import check_float, check_int

__all__ = [
    "SamplingOptions",
    "generate_bytes",
    "generate_command",
    "load_byte_lm",
    "plan_length",
    "register_commands",
    "sample_next",
    "stream_text",
]


@dataclass(frozen=True)
class SamplingOptions:
    """How many bytes to generate and how to pick each (see the module docstring)."""

    max_new_tokens: int = 200
    temperature: float = 1.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("--max-new-tokens", self.max_new_tokens, minimum=1)
        check_float("--temperature", self.temperature, minimum=0.0)
        check_int("--top-k", self.top_k, minimum=0, maximum=256)
        check_int("--seed", self.seed, minimum=0)


def load_byte_lm(path: str) -> CausalLM:
    """The causal byte-level LM of checkpoint ``path`` (eval mode).

    Raises:
        FileNotFoundError / ValueError: no such file, not a checkpoint, a model that is not causal,
            or a task that is not a byte-level language model (each message names the checkpoint).
    """
    model, spec = model_from_checkpoint(load_checkpoint(path))
    hint = "generate needs a causal LM, e.g. from `attnzoo train --task bytes-lm`"
    if not isinstance(model, CausalLM):
        raise ValueError(f"checkpoint {path!r} holds a {type(model).__name__} for task {spec.name!r}; {hint}")
    if not model.cfg.causal:
        raise ValueError(
            f"checkpoint {path!r} holds a non-causal model (task {spec.name!r}, model.causal: false); {hint}"
        )
    if (spec.input_kind, spec.vocab_size, spec.num_classes) != ("bytes", 257, 256):
        raise ValueError(
            f"checkpoint {path!r} was trained on task {spec.name!r} ({spec.input_kind} inputs, "
            f"{spec.num_classes} classes), not a byte-level LM (byte inputs, 256 next-byte classes) such as bytes-lm"
        )
    return model


def plan_length(prompt_len: int, max_new_tokens: int, max_length: int | None) -> tuple[int, str]:
    """``(bytes to generate, why generation stops)`` for a prompt of ``prompt_len`` bytes.

    Raises:
        ValueError: an empty prompt, or one longer than ``max_length``.
    """
    if prompt_len < 1:
        raise ValueError("--prompt must not be empty (the model needs at least one byte to continue)")
    if max_length is not None and prompt_len > max_length:
        raise ValueError(f"the prompt has {prompt_len} bytes but the model reads at most {max_length}")
    room = max_new_tokens if max_length is None else max_length + 1 - prompt_len
    if room < max_new_tokens:
        return room, f"the model's maximum length ({max_length} bytes read) is reached"
    return max_new_tokens, f"--max-new-tokens {max_new_tokens} reached"


def sample_next(logits: Tensor, temperature: float, top_k: int, generator: torch.Generator) -> Tensor:
    """One class per row of ``logits: (B, C)`` -> ``(B,)`` long: greedy, or temperature / top-k sampling."""
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1)
    scaled = logits.double() / temperature
    if 0 < top_k < scaled.shape[-1]:
        kth = scaled.topk(top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    return torch.multinomial(scaled.softmax(dim=-1), 1, generator=generator)[:, 0]


@torch.no_grad()
def generate_bytes(model: CausalLM, prompt: bytes, count: int, opts: SamplingOptions) -> Iterator[int]:
    """Yield ``count`` new bytes (ints 0..255) continuing ``prompt``, one at a time as each is sampled.

    ``count`` must fit the model (see :func:`plan_length`). The generator is lazy: nothing is
    computed before the first ``next``.
    """
    generator = torch.Generator().manual_seed(opts.seed)
    ids = torch.tensor([list(prompt)], dtype=torch.long) + 1  # bytes -> ids (0 is padding)
    logits, state = model.prefill(ids)
    for i in range(count):
        byte = sample_next(logits[:, -1].float(), opts.temperature, opts.top_k, generator)
        yield int(byte)
        if i + 1 < count:
            logits, state = model.step((byte + 1)[:, None], state)


def stream_text(pieces: Iterator[int], out: TextIO) -> int:
    """Write bytes to ``out`` as UTF-8 text as soon as each character is complete; returns bytes written.

    A multi-byte character is held back until its last byte arrives; invalid sequences (and one cut
    off at the end) are written as U+FFFD.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    count = 0
    for byte in pieces:
        count += 1
        text = decoder.decode(bytes([byte]))
        if text:
            out.write(text)
            out.flush()
    out.write(decoder.decode(b"", final=True))
    out.flush()
    return count


def generate_command(args: argparse.Namespace) -> int:
    """``attnzoo generate``: continue ``--prompt`` with a byte-level causal LM checkpoint, streaming to stdout."""
    opts = SamplingOptions(args.max_new_tokens, args.temperature, args.top_k, args.seed)
    model = load_byte_lm(args.checkpoint)
    prompt = args.prompt.encode("utf-8")
    count, reason = plan_length(len(prompt), opts.max_new_tokens, model.encoder.max_length)
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    written = stream_text(generate_bytes(model, prompt, count, opts), sys.stdout)
    print(flush=True)
    print(f"attnzoo generate: {written} new bytes; stopped: {reason}", file=sys.stderr)
    return 0


def register_commands(subparsers: Any) -> None:
    """Add ``attnzoo generate`` to the ``attnzoo`` parser."""
    parser = subparsers.add_parser(
        "generate", help="sample text from a byte-level causal LM checkpoint", description=generate_command.__doc__
    )
    parser.add_argument("--checkpoint", required=True, help="a best.pt / last.pt written by attnzoo train")
    parser.add_argument("--prompt", required=True, help="text to continue (UTF-8)")
    parser.add_argument("--max-new-tokens", type=int, default=200, metavar="K", help="bytes to generate (default 200)")
    parser.add_argument(
        "--temperature", type=float, default=1.0, metavar="T", help="softmax temperature; 0 = greedy (default 1)"
    )
    parser.add_argument(
        "--top-k", type=int, default=0, metavar="K", help="sample among the K most likely bytes; 0 = all (default)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler (default 0)")
    parser.set_defaults(func=generate_command)
