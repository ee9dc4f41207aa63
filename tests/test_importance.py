"""``gswa_plugin.weighting.importance_loss``: the unsupervised term built from the task loss's own
per-tile gradient (issue 15)."""

from __future__ import annotations

import pytest
import torch

from gswa_plugin.errors import LayoutError
from gswa_plugin.layout import TileLayout
from gswa_plugin.weighting import importance_loss


def test_target_follows_the_most_negative_gradient_whatever_its_size():
    layout = TileLayout((4, 4), "last")  # 3 tiles + thumbnail each
    for scale in (1e-6, 1.0):
        w = torch.ones(8, requires_grad=True)
        g = torch.tensor([0.0, -1.0, 0.0, 0.0, 0.5, 0.0, -0.5, 0.0]) * scale
        importance_loss(w, g, layout).backward()
        # lowering the loss means raising the weight of tile 1 (image 0) and tile 2 (image 1)
        assert int(w.grad[:3].argmin()) == 1 and int(w.grad[4:7].argmin()) == 2
        assert float(w.grad[3]) == 0.0 and float(w.grad[7]) == 0.0  # thumbnails left out
        if scale == 1e-6:
            small = w.grad.clone()
        else:
            torch.testing.assert_close(w.grad, small)  # standardised: the same strength at any size


def test_single_view_images_do_not_count_and_bad_shapes_are_refused():
    layout = TileLayout((1, 3), "last")  # one single-view image, one with 2 tiles + thumbnail
    w = torch.ones(4, requires_grad=True)
    loss = importance_loss(w, torch.tensor([5.0, 0.0, -1.0, 0.0]), layout)
    loss.backward()
    assert float(w.grad[0]) == 0.0 and float(w.grad[2]) < float(w.grad[1])
    with pytest.raises(LayoutError, match="one shape"):
        importance_loss(torch.ones(4), torch.ones(3), layout)
