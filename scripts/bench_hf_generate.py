"""Cached decoding tokens/s on a tiny random Llama: SDPA with HF's DynamicCache vs attnzoo mechanisms with the
AttnzooCache (what generate() uses). Usage: python3 scripts/bench_hf_generate.py [--contexts 1024 ...] [--new 32]

Per context and implementation: the prompt (batch 1) fills the cache, then NEW greedy single-token forward
calls are timed one by one; tokens/s = 1 / the median step time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import Cache, DynamicCache, LlamaConfig, LlamaForCausalLM

from attnzoo.integrations.hf import use_attnzoo
from attnzoo.integrations.hf_cache import AttnzooCache

MECHANISMS = {"softmax": {}, "local": {"window_size": 256}, "performer": {"num_features": 64}, "linear": {}}


def tokens_per_second(model: LlamaForCausalLM, ids: torch.Tensor, cache: Cache, new: int) -> float:
    """Prefill ``ids (1, L)`` into ``cache``, then 1 / median time of ``new`` greedy one-token steps."""
    logits = model(ids, cache=cache).logits
    times = []
    for pos in range(ids.shape[1], ids.shape[1] + new):
        token = logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        logits = model(token, cache=cache, position_ids=torch.tensor([[pos]])).logits
        times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times)


def main() -> None:
    """Print one row per implementation: decode tokens/s at each context length."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--new", type=int, default=32)
    args = parser.parse_args()
    cfg = LlamaConfig(
        vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=max(args.contexts) + args.new + 1, attn_implementation="sdpa",
    )  # fmt: skip
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; tiny Llama hidden 128, 2 layers, 4 heads")
    print("implementation | " + " | ".join(f"L={n}" for n in args.contexts) + "  (decode tokens/s)")
    for impl in ["sdpa", *MECHANISMS]:
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
        if impl != "sdpa":
            use_attnzoo(model, impl, **MECHANISMS[impl])
        row = []
        with torch.no_grad():
            for n in args.contexts:
                ids = torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(n))
                cache = DynamicCache(config=cfg) if impl == "sdpa" else AttnzooCache()
                row.append(f"{tokens_per_second(model, ids, cache, args.new):.0f}")
        print(f"{impl} | " + " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
