"""The CSR edge primitives of Diffuser against dense products: unsorted and duplicate edges, the fused
multi-hop diffusion against chained products (outputs and gradients), half precision."""

import pytest
import torch

from attnzoo.ops.diffuser.edges import EdgeLayout, edge_diffusion, edge_dots, edge_matmul
from attnzoo.ops.diffuser.split import GlobalSplitLayout


def _edges(n: int, count: int, seed: int, *, duplicates: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    src, dst = torch.randint(0, n, (count,), generator=gen), torch.randint(0, n, (count,), generator=gen)
    if not duplicates:
        codes = torch.unique(dst * n + src)
        perm = torch.randperm(codes.numel(), generator=gen)  # distinct, not sorted
        src, dst = codes[perm] % n, codes[perm] // n
    return src, dst


def _dense(values: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, n: int) -> torch.Tensor:
    flat = values.new_zeros(*values.shape[:2], n * n).index_add(2, dst * n + src, values)
    return flat.view(*values.shape[:2], n, n)


@pytest.mark.parametrize("duplicates", [False, True])
def test_products_and_dots_equal_dense_fp64(duplicates):
    n, b, h, d = 13, 2, 3, 4
    src, dst = _edges(n, 60, 0, duplicates=duplicates)
    layout = EdgeLayout.build(src, dst, n)
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(b, h, src.numel(), generator=gen, dtype=torch.float64, requires_grad=True)
    x, q, k = (torch.randn(b, h, n, d, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = edge_matmul(values, x, layout)
    ref = _dense(values, src, dst, n) @ x
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(edge_dots(q, k, layout), (q[:, :, dst] * k[:, :, src]).sum(-1), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda v, y: edge_matmul(v, y, layout), (values, x))
    assert torch.autograd.gradcheck(lambda a, c: edge_dots(a, c, layout), (q, k))
    scaled = (q[:, :, dst] * k[:, :, src]).sum(-1) * 0.3  # the scale applied inside the kernel, and its gradient
    torch.testing.assert_close(edge_dots(q, k, layout, 0.3), scaled, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, c: edge_dots(a, c, layout, 0.3), (q, k))


@pytest.mark.parametrize("duplicates", [False, True])
def test_fused_diffusion_equals_chained_products(duplicates):
    n, hops, alpha = 17, 4, 0.2
    src, dst = _edges(n, 90, 2, duplicates=duplicates)
    layout = EdgeLayout.build(src, dst, n)
    gen = torch.Generator().manual_seed(3)
    values = torch.rand(2, 2, src.numel(), generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2, n, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    a = _dense(values, src, dst, n)
    ref = v
    for _ in range(hops):
        ref = (1 - alpha) * a @ ref + alpha * v
    torch.testing.assert_close(edge_diffusion(values, v, layout, hops, alpha), ref, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda w, x: edge_diffusion(w, x, layout, hops, alpha), (values, v))


def test_half_precision_runs_in_fp32_and_keeps_dtype():
    n = 32
    src, dst = _edges(n, 200, 4, duplicates=False)
    layout = EdgeLayout.build(src, dst, n)
    values = torch.rand(1, 2, src.numel())
    x = torch.randn(1, 2, n, 8)
    out = edge_diffusion(values.bfloat16(), x.bfloat16(), layout, 3, 0.1)
    assert out.dtype == torch.bfloat16
    ref = edge_diffusion(values.bfloat16().float(), x.bfloat16().float(), layout, 3, 0.1)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def _split_graph(n: int, seed: int, globals_: list[int]) -> tuple[GlobalSplitLayout, torch.Tensor]:
    """Random edges plus whole rows and columns of ``globals_``; the layout and a bool ``(S,)``, True = real slot."""
    src, dst = _edges(n, 3 * n, seed, duplicates=False)
    glob = torch.tensor(globals_, dtype=torch.long)
    every = torch.arange(n)
    codes = torch.cat([dst * n + src, (glob[:, None] * n + every).reshape(-1), (every[:, None] * n + glob).reshape(-1)])
    codes = torch.unique(codes)
    layout = GlobalSplitLayout.build(codes % n, codes // n, n, glob)
    real = torch.ones(layout.num_edges, dtype=torch.bool)
    real[layout.phantom] = False
    assert int(real.sum()) == codes.numel()  # every edge has exactly one real slot
    return layout, real


@pytest.mark.parametrize("globals_", [[], [3], [0, 5, 8]])
def test_global_split_layout_equals_dense_and_ignores_phantoms(globals_):
    n, b, h, d = 9, 1, 2, 3
    layout, real = _split_graph(n, 5, globals_)
    src, dst = layout.src[real], layout.dst[real]
    gen = torch.Generator().manual_seed(6)
    values = torch.randn(b, h, layout.num_edges, generator=gen, dtype=torch.float64, requires_grad=True)
    x, q, k = (torch.randn(b, h, n, d, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    dense = _dense(values[..., real], src, dst, n)  # the phantom slots' values (random here) must not count
    torch.testing.assert_close(edge_matmul(values, x, layout), dense @ x, rtol=1e-12, atol=1e-12)
    transposed = layout.product_t(layout.transposed(values.detach()), x.detach())
    torch.testing.assert_close(transposed, dense.detach().mT @ x.detach(), rtol=1e-12, atol=1e-12)
    dots = edge_dots(q, k, layout, 0.7)
    torch.testing.assert_close(dots[..., real], 0.7 * (q[:, :, dst] * k[:, :, src]).sum(-1), rtol=1e-12, atol=1e-12)
    assert not dots[..., ~real].any()  # phantoms hold 0
    assert torch.autograd.gradcheck(lambda w, y: edge_matmul(w, y, layout), (values, x))
    assert torch.autograd.gradcheck(lambda a, c: edge_dots(a, c, layout, 0.7), (q, k))
    assert torch.autograd.gradcheck(lambda w, y: edge_diffusion(w, y, layout, 2, 0.3), (values, x))


def test_global_split_layout_rejects_incomplete_global_rows():
    src, dst = torch.tensor([0, 1]), torch.tensor([1, 0])
    with pytest.raises(ValueError, match="rows and columns are not all edges"):
        GlobalSplitLayout.build(src, dst, 3, torch.tensor([0]))
