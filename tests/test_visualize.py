"""Weight pictures (gswa_plugin.tools.visualize, ``gswa visualize``) on real photographs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import gswa_plugin
from gswa_plugin.tools import visualize as vis
from gswa_plugin.tools.visualize import OVERLAY_ALPHA, weight_colours

COSINE = {"variant": "cosine", "cosine_temperature": 0.05}


@pytest.fixture
def fast_default(monkeypatch, internvl_processor):
    """``gswa visualize`` with no --model uses the tiny built-in InternVL; here its fast 56 px-tile
    version (the command's code path is unchanged, only the default model is smaller)."""
    from gswa_plugin.testing.tiny import tiny_internvl, tiny_internvl_processor
    from gswa_plugin.tools import hosts

    monkeypatch.setattr(
        hosts, "tiny_default", lambda max_tiles=None: (tiny_internvl(image_size=56), tiny_internvl_processor(56, max_tiles or 6))
    )


def recovered_levels(picture: Image.Image, image: Image.Image, grid: tuple[int, int]) -> list[float]:
    """Per tile, the brightness of the overlay colour recovered from the picture.

    The picture is ``(1 - a) * photo + a * colour``; with the photo resized the way
    :func:`weight_map` does, ``colour = (picture - (1 - a) * photo) / a``. The median over the
    tile's pixels ignores the digits written on it.
    """
    pic = np.asarray(picture.convert("RGB"), dtype=np.float64)
    width = pic.shape[1]
    height = round(image.height * width / image.width)
    pic = pic[pic.shape[0] - height :]  # drop the caption band above the image
    base = np.asarray(image.convert("RGB").resize((width, height), Image.BICUBIC), dtype=np.float64)
    colour = (pic - (1 - OVERLAY_ALPHA) * base) / OVERLAY_ALPHA
    rows, cols = grid
    levels = []
    for r in range(rows):
        for c in range(cols):
            y0, y1 = round(r * height / rows) + 3, round((r + 1) * height / rows) - 3
            x0, x1 = round(c * width / cols) + 3, round((c + 1) * width / cols) - 3
            rgb = np.median(colour[y0:y1, x0:x1].reshape(-1, 3), axis=0)
            levels.append(float(rgb @ [0.299, 0.587, 0.114]))
    return levels


def assert_ordered_as(levels: list[float], weights: list[float]) -> None:
    """Every tile visibly heavier than another (by 2% of the largest weight) is shaded brighter,
    and each tile's shade is the colormap's colour of its weight."""
    top = max(weights)
    for i, wi in enumerate(weights):
        for j, wj in enumerate(weights):
            if wi < wj - 0.02 * top:
                assert levels[i] < levels[j], (i, j, weights, levels)
    expect = weight_colours(weights) @ np.array([0.299, 0.587, 0.114])
    assert np.allclose(levels, expect, atol=3.0), (levels, expect)


def test_weight_map_shading_follows_the_weights(photos):
    image = photos[1]
    weights = [0.2, 1.7, 0.9, 1.3, 0.4, 1.5]
    pic = vis.weight_map(image, weights, (2, 3), thumbnail_weight=1.0, title="t")
    levels = recovered_levels(pic, image, (2, 3))
    assert np.argsort(levels).tolist() == np.argsort(weights).tolist()
    # and each recovered colour is the colormap's colour of its weight (to rounding)
    expect = weight_colours(weights) @ np.array([0.299, 0.587, 0.114])
    assert np.allclose(levels, expect, atol=3.0)


def test_visualize_returns_the_picture_of_the_models_weights(internvl_model, internvl_processor, photos):
    gswa_plugin.enable(internvl_model, COSINE)
    image = photos[1]
    pic = vis.visualize(internvl_model, internvl_processor, image, width=600)
    w = vis.image_weights(internvl_model, internvl_processor, image)
    assert isinstance(pic, Image.Image) and pic.width == 600
    assert w.grid[0] * w.grid[1] == len(w.tile_weights) > 1
    assert w.thumbnail_weight == 1.0
    assert len(w.similarity) == len(w.tile_weights)
    assert_ordered_as(recovered_levels(pic, image, w.grid), w.tile_weights)


def test_gswa_visualize_writes_one_png_per_photograph(tmp_path, photos, fast_default):
    from gswa_plugin.cli import app
    from gswa_plugin.testing.tiny import sample_image

    folder = tmp_path / "photos"
    folder.mkdir()
    photos[1].save(folder / "coffee.jpg", quality=95)
    sample_image("chelsea").save(folder / "chelsea.png")
    cfg = tmp_path / "gswa.yaml"
    cfg.write_text("gswa:\n  variant: cosine\n  cosine_temperature: 0.05\n")
    out = tmp_path / "maps"
    res = CliRunner().invoke(app, ["visualize", "--image", str(folder), "--gswa", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["chelsea.png", "coffee.png"]
    # the picture's shading is ordered as the weights the model gives the photograph
    from gswa_plugin.tools.hosts import load_host

    net, proc, _ = load_host(None, str(cfg))
    photo = Image.open(folder / "coffee.jpg").convert("RGB")
    w = vis.image_weights(net, proc, photo)
    assert max(w.tile_weights) > 1.2 * min(w.tile_weights)
    assert_ordered_as(recovered_levels(Image.open(out / "coffee.png"), photo, w.grid), w.tile_weights)


def test_visualize_errors_are_clear(tmp_path, fast_default):
    from gswa_plugin.cli import app

    res = CliRunner().invoke(app, ["visualize", "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "image not found" in res.output
    res = CliRunner().invoke(app, ["visualize", "--image", "coffee", "--gswa", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "neither a saved GSWA directory" in res.output
    with pytest.raises(FileNotFoundError, match="no images"):
        vis.find_images(tmp_path)


def test_docs_example_runs(tmp_path, monkeypatch, capsys):
    import runpy
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "docs" / "examples" / "visualize.py"))
    pic = Image.open(tmp_path / "coffee_weights.png")
    assert pic.width == 768
    assert "(2, 3)" in capsys.readouterr().out
