"""The `gswa` command line: adapters, check, demo, as the README shows them."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from gswa_plugin.cli import app

runner = CliRunner()


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


def test_demo_with_image_file(tmp_path):
    from gswa_plugin.testing.tiny import sample_image

    path = tmp_path / "cat.png"
    sample_image("chelsea").save(path)
    res = runner.invoke(app, ["demo", "--image", str(path), "--out", str(tmp_path / "o"), "--max-new-tokens", "1"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "gswa_weights.png").is_file()


def test_demo_missing_model_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["demo", "--model", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "could not load" in res.output


def test_console_script_installed():
    out = subprocess.run([sys.executable, "-m", "gswa_plugin.cli", "version"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


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
        app, ["demo", "--model", str(ckpt), "--image", str(img), "--out", str(tmp_path / "o"), "--max-new-tokens", "1"],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    assert "2x2 tiles" in res.output and "random weights" not in res.output
    assert (tmp_path / "o" / "gswa_weights.png").is_file()
