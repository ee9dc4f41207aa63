"""``gswa_plugin.weighting.distinctiveness_loss``: the unsupervised term that pulls GSWA's tile
distribution towards how distinct each tile is within its image (issue 15, fifth attempt)."""

from __future__ import annotations

import pytest
import torch

from gswa_plugin import GSWAConfig, GSWAModule
from gswa_plugin.errors import LayoutError
from gswa_plugin.layout import TileLayout
from gswa_plugin.weighting import AttentionScorer, distinctiveness_loss, importance_loss, tile_distinctiveness


def _summaries(views: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    """Alike views: one shared pattern plus a little noise."""
    noise = torch.randn(views, dim, generator=torch.Generator().manual_seed(seed)) * 0.1
    return torch.linspace(-1, 1, dim).sin() * 3 + noise


def test_the_target_ranks_an_outlier_tile_first():
    layout = TileLayout((5, 5), "last")  # 4 tiles + thumbnail each
    s = _summaries(10)
    s[1] += torch.tensor([3.0, -3, 0, 0, 3, 0, 0, 0])  # image 0: tile 1 unlike the others
    s[7] -= torch.tensor([3.0, -3, 0, 0, 3, 0, 0, 0])  # image 1: tile 2 (flat view 7), the opposite way
    s[4] += torch.tensor([0.0, 0, 9, 9, 0, 0, 0, -9])  # a thumbnail, however odd, is left out
    d = tile_distinctiveness(s, layout)
    assert d.shape == (10,) and float(d[4]) == 0.0 and float(d[9]) == 0.0
    assert int(d[:4].argmax()) == 1 and int(d[5:9].argmax()) == 2
    w = torch.ones(10, requires_grad=True)
    distinctiveness_loss(w, s, layout).backward()
    # lowering the term means raising the outlier's weight; thumbnails get no gradient
    assert int(w.grad[:4].argmin()) == 1 and int(w.grad[5:9].argmin()) == 2
    assert float(w.grad[4]) == 0.0 and float(w.grad[9]) == 0.0
    # a lower temperature makes a sharper target: the loss at uniform weights is the target's
    # cross-entropy to uniform, log T, whatever the target; at weights on the outlier it falls further
    peaked = torch.ones(10)
    peaked[1] = peaked[7] = 5.0
    assert distinctiveness_loss(peaked, s, layout, 0.5) < distinctiveness_loss(peaked, s, layout, 2.0)


def test_it_shares_importance_losss_target_and_is_scale_free():
    """The same standardised-target cross-entropy as importance_loss, with d in place of -dL/dw."""
    layout = TileLayout((4, 4), "last")
    s = _summaries(8, seed=1)
    w = torch.rand(8, generator=torch.Generator().manual_seed(2)) + 0.5
    d = tile_distinctiveness(s, layout)
    torch.testing.assert_close(distinctiveness_loss(w, s, layout, 0.7), importance_loss(w, -d, layout, 0.7))
    # LN0 first: a summary's scale does not change the target
    torch.testing.assert_close(distinctiveness_loss(w, 1e3 * s, layout), distinctiveness_loss(w, s, layout))


def test_identity_start_is_untouched_and_the_gradient_reaches_gswa_only():
    cfg = GSWAConfig(variant="self_attn", hidden_size=16, num_heads=2, score_input="squared_deviation")
    torch.manual_seed(0)
    gswa = GSWAModule(8, cfg, AttentionScorer(8, cfg))
    assert gswa.is_identity()
    layout = TileLayout((5, 3), "last")
    encoder = torch.nn.Linear(8, 8)  # stands in for the host that makes the summaries
    s = encoder(_summaries(8, seed=3))
    w = gswa(s, layout)
    assert torch.equal(w, torch.ones_like(w))  # computing the term changes no forward
    loss = distinctiveness_loss(w, s, layout)
    params = list(gswa.parameters())
    loss.backward(inputs=params)
    assert encoder.weight.grad is None  # the summaries are the host's: no gradient there
    assert gswa.scorer.query.weight.grad.abs().sum() > 0  # the identity start is left by training only
    assert gswa.is_identity()


def test_single_view_images_do_not_count_and_bad_shapes_are_refused():
    layout = TileLayout((1, 4), "last")  # one single-view image, one with 3 tiles + thumbnail
    w = torch.ones(5, requires_grad=True)
    s = _summaries(5)
    s[2] += torch.tensor([3.0, -3, 0, 0, 3, 0, 0, 0])
    distinctiveness_loss(w, s, layout).backward()
    assert float(w.grad[0]) == 0.0 and float(w.grad[2]) < float(w.grad[1])
    assert float(tile_distinctiveness(s, layout)[0]) == 0.0
    # two tiles lie equally far from their mean: the target is uniform, uniform weights get no push
    two = torch.ones(3, requires_grad=True)
    distinctiveness_loss(two, _summaries(3), TileLayout((3,), "last")).backward()
    assert float(two.grad.abs().max()) < 0.02 * float(w.grad.abs().max())
    with pytest.raises(LayoutError, match="same views"):
        distinctiveness_loss(torch.ones(5), torch.ones(4, 8), layout)
    with pytest.raises(LayoutError, match="same views"):
        distinctiveness_loss(torch.ones(5, 1), torch.ones(5, 8), layout)
    with pytest.raises(LayoutError, match="flat summaries"):
        tile_distinctiveness(torch.ones(6, 8), layout)
