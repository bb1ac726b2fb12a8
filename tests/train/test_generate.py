"""``attnzoo generate`` on checkpoints of the training harness: streaming, greedy and sampled decoding, errors."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

import attnzoo
from attnzoo import tasks
from attnzoo.checkpoints import save_checkpoint
from attnzoo.cli import main
from attnzoo.models import ModelConfig, build_model
from attnzoo.train import load_config, train
from attnzoo.train.generate import SamplingOptions, generate_bytes, load_byte_lm, sample_next, stream_text

SEQ_LEN = 32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny causal bytes-lm model trained for a few steps by the harness (its last.pt)."""
    root = tmp_path_factory.mktemp("bytes-lm")
    overrides = {
        "task": "bytes-lm",
        "task_options": {"seq_len": SEQ_LEN},
        "train_size": 64,
        "dev_size": 8,
        "test_size": 8,
        "model.causal": True,
        "model.dim": 16,
        "model.num_heads": 2,
        "model.num_layers": 1,
        "model.mlp_dim": 32,
        "model.dropout": 0.0,
        "model.attention_dropout": 0.0,
        "steps": 4,
        "eval_every": 4,
        "eval_batches": 1,
        "batch_size": 8,
        "lr": 3e-3,
        "cache_dir": str(root / "cache"),
        "out_dir": str(root / "run"),
        "progress": False,
        "tensorboard": False,
    }
    train(load_config(None, overrides))
    return root / "run" / "last.pt"


def generate(capsys: pytest.CaptureFixture[str], ckpt: Path | str, *flags: str) -> tuple[int, str, str]:
    code = main(["generate", "--checkpoint", str(ckpt), *flags])
    out, err = capsys.readouterr()
    return code, out, err


def greedy_reference(ckpt: Path, prompt: bytes, count: int) -> bytes:
    """Greedy continuation through the full forward over the growing sequence (no decoding state)."""
    model = load_byte_lm(str(ckpt))
    ids = [b + 1 for b in prompt]
    with torch.no_grad():
        for _ in range(count):
            x = torch.tensor([ids])
            logits = model({"input_ids": x, "mask": torch.ones_like(x, dtype=torch.bool)})
            ids.append(int(logits[0, -1].argmax()) + 1)
    return bytes(i - 1 for i in ids[len(prompt) :])


def test_greedy_generation_equals_the_full_forward(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = generate(capsys, checkpoint, "--prompt", "the cat", "--max-new-tokens", "12", "--temperature", "0")
    assert code == 0
    expected = greedy_reference(checkpoint, b"the cat", 12)
    assert out == "the cat" + expected.decode("utf-8", errors="replace") + "\n"
    assert err == "attnzoo generate: 12 new bytes; stopped: --max-new-tokens 12 reached\n"
    again = generate(capsys, checkpoint, "--prompt", "the cat", "--max-new-tokens", "12", "--temperature", "0")
    other_seed = generate(
        capsys, checkpoint, "--prompt", "the cat", "--max-new-tokens", "12", "--temperature", "0", "--seed", "9"
    )
    assert again[1] == other_seed[1] == out  # greedy is deterministic and ignores the seed
    top1 = generate(capsys, checkpoint, "--prompt", "the cat", "--max-new-tokens", "12", "--top-k", "1")
    assert top1[1] == out  # top-k 1 at temperature 1 is greedy too


def test_sampling_is_seeded(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flags = ("--prompt", "a ", "--max-new-tokens", "25", "--temperature", "1.5")
    first, second = generate(capsys, checkpoint, *flags), generate(capsys, checkpoint, *flags)
    other = generate(capsys, checkpoint, *flags, "--seed", "1")
    assert first == second and first[0] == 0
    assert other[1] != first[1] and other[1].startswith("a ")


def test_stops_at_the_models_maximum_length(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompt = "x" * (SEQ_LEN - 2)
    code, out, err = generate(capsys, checkpoint, "--prompt", prompt, "--temperature", "0")
    # a model that reads at most 32 bytes continues 30 of them by 3 (the last one is read by nobody)
    assert code == 0
    assert (
        err == f"attnzoo generate: 3 new bytes; stopped: the model's maximum length ({SEQ_LEN} bytes read) is reached\n"
    )
    assert out == prompt + greedy_reference(checkpoint, prompt.encode(), 3).decode("utf-8", errors="replace") + "\n"
    code, out, err = generate(capsys, checkpoint, "--prompt", "y" * (SEQ_LEN + 1))
    assert code == 2 and out == ""
    assert err == f"attnzoo generate: error: the prompt has {SEQ_LEN + 1} bytes but the model reads at most {SEQ_LEN}\n"


def test_generation_streams_byte_by_byte(checkpoint: Path) -> None:
    model = load_byte_lm(str(checkpoint))
    steps = []
    real_step = model.step
    model.step = lambda ids, state: (steps.append(ids), real_step(ids, state))[1]  # type: ignore[method-assign]
    stream = generate_bytes(model, "é".encode(), 5, SamplingOptions(temperature=0.0))
    assert steps == []  # lazy: nothing decoded before the first byte is asked for
    first = next(stream)
    assert steps == [] and 0 <= first < 256
    rest = list(stream)
    assert len(rest) == 4 and len(steps) == 4  # one step per further byte, none after the last
    assert [int(s) - 1 for s in steps] == [first, *rest[:-1]]  # each sampled byte is fed back


class Recorder(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_stream_text_holds_back_partial_characters() -> None:
    out = Recorder()
    data = "hé€🙂".encode() + b"\xe2\x82"  # ends in a cut-off 3-byte character
    assert stream_text(iter(data), out) == len(data)
    assert out.writes == ["h", "é", "€", "🙂", "\ufffd"]
    out = Recorder()
    stream_text(iter(b"a\xffb"), out)
    assert out.getvalue() == "a\ufffdb"


def test_sample_next_top_k_and_temperature() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).expand(4000, 4)
    gen = torch.Generator().manual_seed(0)
    draws = sample_next(logits, 1.0, 2, gen)
    assert set(draws.tolist()) == {2, 3}
    share = (draws == 3).double().mean().item()
    assert abs(share - 1 / (1 + torch.e**-1)) < 0.03  # softmax over the two kept logits
    hot = sample_next(logits, 100.0, 0, gen)
    assert set(hot.tolist()) == {0, 1, 2, 3} and abs((hot == 0).double().mean().item() - 0.25) < 0.03
    assert sample_next(logits[:2], 0.0, 0, gen).tolist() == [3, 3]


def fake_checkpoint(path: Path, task: str, **model: object) -> Path:
    """A checkpoint laid out as the harness writes it, for a model the harness would build."""
    options = {"seq_len": SEQ_LEN} if task == "bytes-lm" else {}
    cfg = ModelConfig(dim=16, num_heads=2, num_layers=1, mlp_dim=32, **model)  # type: ignore[arg-type]
    net = build_model(tasks.get(task, **options), cfg)
    config = {"task": task, "task_options": options, "model": cfg.to_dict()}
    save_checkpoint(path, {"model": net.state_dict(), "step": 0, "config": config, "meta": {"length": SEQ_LEN}})
    return path


@pytest.mark.parametrize("name", [spec.name for spec in attnzoo.available() if spec.capabilities.causal])
def test_every_causal_mechanism_generates(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    """Greedy generation through each mechanism's decoding state equals argmax over full forwards."""
    options = {"local": {"window_size": 4}, "dilated": {"segment_lengths": (8, 16), "dilation_rates": (1, 2)}}
    options["butterfly"] = {"block_size": 4}
    torch.manual_seed(0)
    ckpt = fake_checkpoint(
        tmp_path / "ckpt.pt", "bytes-lm", attention=name, attention_options=options.get(name, {}), causal=True
    )
    code, out, err = generate(capsys, ckpt, "--prompt", "hello", "--max-new-tokens", "20", "--temperature", "0")
    if code == 2 and "has no token-by-token decoding" in err:
        pytest.skip(f"{name}: decoding has not landed yet")
    assert code == 0, err
    assert out == "hello" + greedy_reference(ckpt, b"hello", 20).decode("utf-8", errors="replace") + "\n"


@pytest.mark.parametrize(
    ("task", "model", "message"),
    [
        ("bytes-lm", {"causal": False}, "holds a non-causal model (task 'bytes-lm', model.causal: false)"),
        ("kv-lookup", {"causal": True}, "trained on task 'kv-lookup' (tokens inputs, 8 classes), not a byte-level LM"),
        ("text", {"causal": True}, "holds a SequenceClassifier for task 'text'; generate needs a causal LM"),
    ],
)
def test_refuses_other_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], task: str, model: dict, message: str
) -> None:
    ckpt = fake_checkpoint(tmp_path / "ckpt.pt", task, **model)
    code, out, err = generate(capsys, ckpt, "--prompt", "hi")
    assert code == 2 and out == "" and message in err and err.startswith("attnzoo generate: error: checkpoint")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-new-tokens", "0"], "option --max-new-tokens must be >= 1, got 0"),
        (["--temperature", "-0.5"], "option --temperature must be >= 0.0, got -0.5"),
        (["--temperature", "inf"], "option --temperature must be finite, got inf"),
        (["--top-k", "257"], "option --top-k must be <= 256, got 257"),
        (["--seed", "-1"], "option --seed must be >= 0, got -1"),
        (["--prompt", ""], "--prompt must not be empty (the model needs at least one byte to continue)"),
    ],
)
def test_bad_flags(checkpoint: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str) -> None:
    code, out, err = generate(capsys, checkpoint, "--prompt", "hi", *flags)
    assert code == 2 and out == "" and err == f"attnzoo generate: error: {message}\n"


def test_unparsable_flags_and_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--checkpoint", "x.pt", "--prompt", "hi", "--top-k", "two"])
    assert exit_info.value.code == 2 and "--top-k: invalid int value: 'two'" in capsys.readouterr().err
    code, _, err = generate(capsys, tmp_path / "none.pt", "--prompt", "hi")
    assert code == 2 and f"checkpoint {str(tmp_path / 'none.pt')!r} does not exist" in err
