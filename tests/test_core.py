"""The GSWA math (gswa_plugin.weighting): layouts, weights, variants, dtype and device."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from gswa_plugin import GSWAConfig, LayoutError
from gswa_plugin.apply import apply_weights
from gswa_plugin.layout import TileBatch, TileLayout, pad_summaries
from gswa_plugin.weighting import BUILTIN_VARIANTS, GSWAModule, logits_to_weights


def make(variant: str, dim: int = 16, **kw) -> GSWAModule:
    cfg = GSWAConfig(variant=variant, hidden_size=32, num_heads=4, **kw)
    torch.manual_seed(0)
    return GSWAModule(dim, cfg, BUILTIN_VARIANTS[variant](dim, cfg))


def randomise(module: GSWAModule) -> GSWAModule:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


def tile_slices(layout: TileLayout):
    start = 0
    for n, gi in zip(layout.views_per_image, layout.global_indices()):
        views = list(range(start, start + n))
        tiles = [v for v in views if v != gi]
        yield tiles, gi
        start += n


@pytest.mark.parametrize("variant", ["self_attn", "cross_attn"])
def test_identity_at_initialisation_is_exact(variant):
    module = make(variant)
    layout = TileLayout((5, 1, 13, 3), "last")
    w = module(torch.randn(layout.num_views, 16), layout)
    assert torch.equal(w, torch.ones_like(w))


@pytest.mark.parametrize("variant", ["self_attn", "cross_attn", "cosine"])
@pytest.mark.parametrize("position", ["first", "last", "none"])
def test_weights_positive_with_mean_one_per_image(variant, position):
    module = randomise(make(variant))
    layout = TileLayout((5, 1, 10, 3), position)
    w = module(torch.randn(layout.num_views, 16), layout)
    assert w.dtype == torch.float32
    for tiles, gi in tile_slices(layout):
        tw = w[tiles]
        assert (tw > 0).all()
        assert tw.mean().item() == pytest.approx(1.0, abs=1e-5)
        if gi is not None:
            assert w[gi].item() == 1.0  # the thumbnail keeps global_weight=1
    assert w[5].item() == 1.0  # a single-view image passes unchanged


def test_single_tile_image_passes_unchanged():
    module = randomise(make("self_attn"))
    w = module(torch.randn(1, 16), TileLayout((1,), "last"))
    assert torch.equal(w, torch.ones(1))


@pytest.mark.parametrize("variant", ["self_attn", "cross_attn"])
def test_equivariant_to_permuting_tiles(variant):
    module = randomise(make(variant)).eval()
    layout = TileLayout((7,), "last")
    s = torch.randn(7, 16)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    s_perm = torch.cat([s[:6][perm], s[6:]])
    w, w_perm = module(s, layout), module(s_perm, layout)
    torch.testing.assert_close(w_perm[:6], w[:6][perm], rtol=1e-5, atol=1e-6)


def test_cosine_matches_closed_form():
    module = make("cosine", cosine_temperature=0.2)
    layout = TileLayout((6, 4), "last")
    s = torch.randn(10, 16)
    w = module(s, layout)
    for tiles, gi in tile_slices(layout):
        a = torch.softmax(F.cosine_similarity(s[gi][None], s[tiles], dim=-1) / 0.2, dim=0)
        torch.testing.assert_close(w[tiles], len(tiles) * a, rtol=1e-5, atol=1e-6)


def test_batched_equals_one_image_at_a_time():
    module = randomise(make("self_attn")).eval()
    layout = TileLayout((5, 13, 3), "first")
    s = torch.randn(layout.num_views, 16)
    w = module(s, layout)
    start = 0
    for n in layout.views_per_image:
        alone = module(s[start : start + n], TileLayout((n,), "first"))
        torch.testing.assert_close(w[start : start + n], alone, rtol=1e-5, atol=1e-6)
        start += n


def test_padding_places_thumbnail_in_slot_zero():
    s = torch.arange(7, dtype=torch.float32)[:, None]
    p = pad_summaries(s, TileLayout((4, 3), "last"))
    assert p.tokens[:, 0, 0].tolist() == [3.0, 6.0]
    assert p.tile_mask.tolist() == [[True, True, True], [True, True, False]]
    p = pad_summaries(s, TileLayout((4, 3), "first"))
    assert p.tokens[:, 0, 0].tolist() == [0.0, 4.0]
    p = pad_summaries(s, TileLayout((4, 3), "none"))  # no thumbnail: the tiles' mean stands in
    assert p.tokens[:, 0, 0].tolist() == [1.5, 5.0]


def test_temperature_and_floor():
    logits = torch.tensor([[2.0, 0.0, -2.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    sharp = logits_to_weights(logits, mask, temperature=0.5)
    soft = logits_to_weights(logits, mask, temperature=2.0)
    assert sharp.max() > soft.max()
    floored = logits_to_weights(logits, mask, temperature=0.1, min_weight=0.3)
    assert floored.min() >= 0.3 - 1e-6
    assert floored.mean().item() == pytest.approx(1.0, abs=1e-6)


def test_global_weight_is_configurable():
    module = make("self_attn", global_weight=0.5)
    w = module(torch.randn(4, 16), TileLayout((4,), "last"))
    assert w.tolist() == [1.0, 1.0, 1.0, 0.5]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_follows_host_dtype(dtype):
    module = randomise(make("self_attn")).to(dtype)
    layout = TileLayout((5, 3), "last")
    w = module(torch.randn(8, 16, dtype=dtype), layout)
    assert torch.isfinite(w).all()
    feats = torch.randn(8, 4, 6, dtype=dtype)
    out = apply_weights(feats, w)
    assert out.dtype == dtype
    assert torch.equal(apply_weights(feats, torch.ones(8)), feats)


class _CountOps(TorchDispatchMode):
    """Counts every aten op dispatched while active (one count per op call)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _forward_ops(module: GSWAModule, layout: TileLayout) -> Counter[str]:
    summaries = torch.randn(layout.num_views, 16)
    with _CountOps() as count:
        w = module(summaries, layout)
    assert w.shape == (layout.num_views,)
    return count.ops


@pytest.mark.parametrize("variant", ["self_attn", "cross_attn", "cosine"])
@pytest.mark.parametrize("position", ["first", "last", "none"])
def test_no_python_loop_over_images_in_hot_path(variant, position):
    """The aten ops GSWAModule.forward dispatches do not grow with the number of images or tiles.

    A Python loop over images or tiles (in the module, a variant or ``pad_summaries``) dispatches
    its ops once per image, so 16 images of 2..13 views would run more ops than 2 images.
    """
    module = randomise(make(variant))  # train mode, grad enabled: the training hot path
    few = _forward_ops(module, TileLayout((3, 7), position))
    many_counts = (2, 13, 5, 9, 4, 11, 6, 3, 12, 8, 2, 10, 7, 13, 5, 4)
    many = _forward_ops(module, TileLayout(many_counts, position))
    assert sum(few.values()) > 10  # the counter sees the forward's ops at all
    grew = {op: (few[op], many[op]) for op in few.keys() | many.keys() if few[op] != many[op]}
    assert not grew, f"ops (2 images, 16 images) that depend on the number of images: {grew}"


def test_layout_errors_are_clear():
    with pytest.raises(LayoutError, match="describes 5 views"):
        TileBatch(torch.zeros(4, 2, 3), torch.zeros(4, 8), TileLayout((5,), "last"))
    with pytest.raises(LayoutError, match="at least one view"):
        TileLayout((3, 0), "last")
    with pytest.raises(LayoutError, match="global_position"):
        TileLayout((3,), "middle")
    with pytest.raises(LayoutError, match="summaries of width 16"):
        make("self_attn")(torch.randn(3, 8), TileLayout((3,), "last"))


def test_parameter_names_and_own_random_stream():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    from gswa_plugin.testing.tiny import tiny_internvl

    _ = GSWAConfig()  # creating configs consumes nothing
    after = torch.rand(3)
    assert torch.equal(expected, after)
    model = tiny_internvl(image_size=56)
    import gswa_plugin

    torch.manual_seed(7)
    gswa_plugin.enable(model, {"hidden_size": 32, "num_heads": 4})
    after_enable = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(after_enable, torch.rand(3)), "enable() must not consume the global random stream"
    names = [n for n, _ in model.named_parameters() if n.startswith("gswa.")]
    assert names and all(n.startswith("gswa.scorer.") for n in names)
