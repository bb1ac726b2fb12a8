"""Approximation-error cases: the fp64 reference, the input distributions and the two error numbers."""

import math

import pytest
import torch

from attnzoo.bench.accuracy import DISTRIBUTIONS, error_record, exact_softmax, make_inputs, relative_error


@pytest.mark.parametrize("causal", [False, True])
def test_chunked_exact_softmax_matches_dense(causal):
    q, k, v = make_inputs("unit-variance", (1, 2, 300, 16))  # 300: chunks of 128 with a partial last one
    scores = q @ k.transpose(-1, -2) / 4.0
    if causal:
        scores = scores.masked_fill(torch.ones(300, 300, dtype=torch.bool).triu(1), float("-inf"))
    ref = torch.softmax(scores, -1) @ v
    assert relative_error(exact_softmax(q, k, v, causal=causal), ref) < 1e-14


def test_distributions_give_the_documented_logit_spread():
    spread, entropy = {}, {}
    n = 512
    for dist in DISTRIBUTIONS:
        q, k, _ = make_inputs(dist, (1, 4, n, 64))
        logits = q @ k.transpose(-1, -2) / 8.0
        spread[dist] = float(logits.std())
        p = torch.softmax(logits, -1)
        entropy[dist] = float(-(p * p.clamp_min(1e-300).log()).sum(-1).mean())
    assert 0.005 < spread["near-uniform"] < 0.02 and entropy["near-uniform"] > math.log(n) - 0.01
    assert 0.9 < spread["unit-variance"] < 1.1
    # peaky: each row spreads over its own cluster's keys only (8 clusters: entropy about log(n / 8))
    assert abs(entropy["peaky-clustered"] - math.log(n / 8)) < 0.3
    with pytest.raises(ValueError, match="unknown input distribution 'gaussian'"):
        make_inputs("gaussian", (1, 1, 4, 4))


def test_exact_mechanism_shows_rounding_only():
    rec = error_record("softmax", 256, "unit-variance", {})
    assert rec["exact"] and rec["status"] == "ok"
    assert 0 < rec["err_softmax"] < 1e-5 and 0 < rec["err_fp64"] < 1e-5


def test_pattern_mechanism_error_is_its_pattern_not_rounding():
    rec = error_record("local", 256, "unit-variance", {"window_size": 16})
    assert rec["err_softmax"] > 0.1  # a 33-key window is far from full softmax over 256 keys
    assert rec["err_fp64"] < 1e-5
    full = error_record("local", 256, "unit-variance", {"window_size": 256})
    assert full["err_softmax"] < 1e-5  # the window covers every key: exact softmax


def test_core_input_widths_come_from_the_module():
    import attnzoo
    from attnzoo.bench.run import core_widths, make_qkv

    assert core_widths(attnzoo.build("softmax", 64, 4), 64) == (16, 16, 16)
    q, k, v, g = make_qkv((1, 2, 8, 4), torch.float32, torch.device("cpu"), widths=(3, 5, 7))
    assert (q.shape[-1], k.shape[-1], v.shape[-1], g.shape) == (3, 5, 7, v.shape)
    assert q.requires_grad and not g.requires_grad
    if "psf" in {s.name for s in attnzoo.available()}:  # its core reads chord factors, not queries
        assert core_widths(attnzoo.build("psf", 64, 4), 64) != (16, 16, 16)
        with pytest.raises(NotImplementedError, match="no softmax to compare with"):
            error_record("psf", 64, "unit-variance", {})
