"""``score_input: squared_deviation``: the scorer reads how unlike the image's other tiles each view is.

Identity at initialisation, mean-1 weights, padding (images with different tile counts) and the
sign-free reading are checked on the module; the needle benchmark (docs/needle.md) measures what it
changes after training.
"""

from __future__ import annotations

import pytest
import torch

from gswa_plugin import ConfigError, GSWAConfig
from gswa_plugin.layout import TileLayout
from gswa_plugin.weighting import BUILTIN_VARIANTS, GSWAModule


def make(variant: str, dim: int = 16, **kw) -> GSWAModule:
    cfg = GSWAConfig(variant=variant, hidden_size=32, num_heads=4, score_input="squared_deviation", **kw)
    torch.manual_seed(0)
    return GSWAModule(dim, cfg, BUILTIN_VARIANTS[variant](dim, cfg))


@pytest.mark.parametrize("variant", ["self_attn", "cross_attn"])
def test_identity_at_initialisation_and_mean_one_after(variant):
    module = make(variant)
    layout = TileLayout((5, 1, 13, 3), "last")
    s = torch.randn(layout.num_views, 16)
    assert module.is_identity()
    w = module(s, layout)
    assert torch.equal(w, torch.ones_like(w))
    with torch.no_grad():
        module.scorer.query.weight.normal_()
    w = module(s, layout)
    assert not torch.equal(w, torch.ones_like(w))
    start = 0
    for n in layout.views_per_image:
        if n > 1:  # tiles then the thumbnail (last) at global_weight 1
            assert w[start : start + n - 1].mean().item() == pytest.approx(1.0, abs=1e-5)
            assert w[start + n - 1].item() == 1.0
        start += n


def test_reads_only_the_squared_deviation_from_the_image_tile_mean():
    """The up-projection receives ``(LN(tile) - mean of the image's LN(tiles))**2``; the padding of a
    batch of images with different tile counts does not enter an image's mean (batched = alone)."""
    module = make("cross_attn").eval()
    with torch.no_grad():
        module.scorer.query.weight.normal_()
    g = torch.Generator().manual_seed(3)
    layout = TileLayout((4, 7), "first")
    s = torch.randn(layout.num_views, 16, generator=g)
    w = module(s, layout)
    ln = torch.nn.functional.layer_norm(s, (16,))
    tiles = ln[1:4]
    captured = {}
    hook = module.scorer.up.register_forward_pre_hook(lambda m, a: captured.__setitem__("x", a[0]))
    module(s, layout)
    hook.remove()
    torch.testing.assert_close(captured["x"][0, 1:4], (tiles - tiles.mean(0)) ** 2)
    alone = module(s[:4], TileLayout((4,), "first"))
    torch.testing.assert_close(w[:4], alone, rtol=1e-5, atol=1e-6)
    assert w[:4].std() > 1e-3


def test_bad_value_is_a_clear_error():
    with pytest.raises(ConfigError, match="score_input"):
        GSWAConfig(score_input="squared")
