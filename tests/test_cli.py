"""The `gswa` command line: adapters, check, demo, as the README shows them."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

import gswa_plugin
from gswa_plugin.cli import app

runner = CliRunner()


def table_rows(output: str) -> list[list[str]]:
    """The body rows of the rich tables in ``output``, as lists of stripped cell texts."""
    return [
        [c.strip() for c in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if line.lstrip().startswith("│")
    ]


def test_adapters_lists_builtin_adapters_and_variants():
    res = runner.invoke(app, ["adapters"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "internvl" in res.output and "gswa_plugin.adapters.internvl" in res.output
    for v in ("self_attn", "cross_attn", "cosine"):
        assert v in res.output


def test_check_ok_and_errors(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("gswa:\n  variant: cross_attn\n")
    res = runner.invoke(app, ["check", str(good)])
    assert res.exit_code == 0 and "ok" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("gswa:\n  varient: cosine\n  temperature: -1\n")
    res = runner.invoke(app, ["check", str(bad)])
    assert res.exit_code == 1
    assert "did you mean `variant`" in res.output and "`temperature` must be > 0" in res.output


def test_demo_on_embedded_default(tmp_path):
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--max-new-tokens", "2"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "GSWA tile weights (cosine, adapter internvl; 2x3 tiles" in res.output
    assert "thumbnail" in res.output
    png = tmp_path / "gswa_weights.png"
    img = Image.open(png)
    assert img.size[0] == 768 and np.asarray(img).std() > 10


def test_demo_with_image_file(tmp_path, monkeypatch):
    """The demo's weight table and picture for a photograph file: what it computed, not only that it ran."""
    from gswa_plugin.testing.tiny import sample_image, tiny_internvl_processor
    from gswa_plugin.tools import demo

    photo = sample_image("chelsea")
    path = tmp_path / "cat.png"
    photo.save(path)
    results = []
    real_run_demo = demo.run_demo
    monkeypatch.setattr(demo, "run_demo", lambda **kw: results.append(real_run_demo(**kw)) or results[-1])
    res = runner.invoke(
        app,
        ["demo", "--image", str(path), "--out", str(tmp_path / "o"), "--max-new-tokens", "1"],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    # the real processor the demo uses (448 px tiles, up to 12) tiles this photograph into views + a thumbnail
    views = tiny_internvl_processor(image_size=448, max_patches=12).image_processor(images=[photo], return_tensors="pt")
    n_tiles = views["pixel_values"].shape[0] - 1
    assert n_tiles > 1

    # the printed table: one row per tile (row, col in the grid of the title) and the thumbnail
    rows = table_rows(res.output)
    tiles = [r for r in rows if r[0].isdigit()]
    assert [int(r[0]) for r in tiles] == list(range(n_tiles)), res.output
    grid_rows, grid_cols = results[0].grid
    assert grid_rows * grid_cols == n_tiles and f"{grid_rows}x{grid_cols} tiles" in res.output
    assert [(int(r[1]), int(r[2])) for r in tiles] == [divmod(i, grid_cols) for i in range(n_tiles)]
    printed = [float(r[3]) for r in tiles]
    assert all(math.isfinite(w) and w > 0 for w in printed), printed
    assert abs(sum(printed) / n_tiles - 1) <= 1e-3, printed  # printed to 3 decimals
    assert max(printed) - min(printed) > 1e-2, printed  # the cosine variant weights by content: not uniform
    thumb = [r for r in rows if r[0] == "thumbnail"]
    assert len(thumb) == 1 and float(thumb[0][3]) == 1.0

    # what run_demo computed, unrounded, and that the table shows it
    (result,) = results
    w = np.array(result.tile_weights)
    assert w.shape == (n_tiles,) and np.isfinite(w).all() and (w > 0).all()
    assert abs(w.mean() - 1) < 1e-4, w
    assert [f"{x:.3f}" for x in w] == [r[3] for r in tiles]

    # the picture: a real PNG of the photograph's aspect (plus a title band), not blank
    png = tmp_path / "o" / "gswa_weights.png"
    assert result.picture == png and f"picture: {png}" in res.output.replace("\n", "")
    with Image.open(png) as img:
        assert img.format == "PNG"
        width, height = img.size
        pixels = np.asarray(img.convert("RGB"))
    assert width == 768 and width * photo.height / photo.width <= height <= 2 * width, img.size
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000 and pixels.std() > 10


def test_demo_missing_model_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["demo", "--model", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert f"--model '{tmp_path / 'nope'}': no such directory" in " ".join(res.output.split())


def test_console_script_installed():
    """The installed `gswa` script (next to this interpreter, as `pip install` puts it) runs the CLI."""
    script = Path(sys.executable).parent / ("gswa.exe" if os.name == "nt" else "gswa")
    assert script.is_file(), (
        f"no `gswa` console script next to {sys.executable}: install the project into this environment "
        "(pip install -e .) so that [project.scripts] is installed"
    )
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run([str(script), "version"], check=False, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == gswa_plugin.__version__
    out = subprocess.run([str(script), "--help"], check=False, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Usage: gswa" in out.stdout
    listed = {r[0].split()[0] for r in table_rows(out.stdout) if r and r[0]}
    commands = {c.name for c in app.registered_commands}
    assert {"adapters", "check", "demo", "influence", "version", "train"} <= commands <= listed, out.stdout


def test_demo_on_a_local_checkpoint(tmp_path):
    """`gswa demo --model DIR --image FILE` loads a real checkpoint directory (saved here by the test)."""
    from gswa_plugin.hf import save_processor
    from gswa_plugin.testing.tiny import sample_image, tiny_internvl, tiny_internvl_processor

    ckpt = tmp_path / "ckpt"
    tiny_internvl(image_size=56).save_pretrained(ckpt)
    save_processor(tiny_internvl_processor(image_size=56, max_patches=6), ckpt)
    img = tmp_path / "astronaut.png"
    sample_image("astronaut").save(img)
    res = runner.invoke(
        app,
        ["demo", "--model", str(ckpt), "--image", str(img), "--out", str(tmp_path / "o"), "--max-new-tokens", "1"],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    assert "2x2 tiles" in res.output and "random weights" not in res.output
    assert (tmp_path / "o" / "gswa_weights.png").is_file()
