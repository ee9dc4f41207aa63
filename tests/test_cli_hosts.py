"""One way to name the hosts built in code (`--model tiny`, `--model tiny-llava-next`, ...) in every
command, no hub access for them or when offline, inputs checked before a model loads, and the
demo picture's legend. The commands run the installed `gswa` console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gswa_plugin.tools import hosts

SCRIPT = Path(sys.executable).parent / ("gswa.exe" if os.name == "nt" else "gswa")
#: An address where nothing answers: a command that reached for the hub would fail or retry.
NO_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": ""}


def gswa(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "COLUMNS": "400", **env}
    for key in [k for k, v in env.items() if v == ""]:
        full_env.pop(key)
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=300, check=False)


@pytest.mark.parametrize("name", list(hosts.TINY_HOSTS))
def test_every_tiny_name_builds_a_host_gswa_weights(name):
    """Each name is a real transformers host with its real processor, and GSWA finds its adapter."""
    import torch

    import gswa_plugin
    from gswa_plugin.testing.tiny import sample_image

    net, processor, handle = hosts.load_host(name)
    assert handle is not None
    with torch.no_grad():
        net(**hosts.model_inputs(net, processor, [sample_image("coffee")], "describe the image"))
    (w,) = gswa_plugin.last_weights(net)
    assert w.numel() > 1 and torch.isfinite(w).all()


@pytest.mark.slow  # three model runs through the console script; .ci/steps/05-wheel.sh runs it
def test_visualize_diagnose_influence_take_tiny_names_without_the_hub(tmp_path):
    """`tiny` and a family's tiny host in the three commands of the README, with the hub unreachable
    and the offline variables unset: none of them may try to download anything."""
    maps = tmp_path / "maps"
    res = gswa("visualize", "--model", "tiny-llava-onevision", "--image", "coffee", "--out", str(maps), **NO_HUB)
    assert res.returncode == 0, res.stderr
    assert (maps / "coffee.png").is_file()
    res = gswa("diagnose", "--model", "tiny-llava-next", "--image", "coffee", **NO_HUB)
    assert res.returncode == 0, res.stderr
    assert "GSWA weights (cosine) over 1 image(s)" in res.stdout
    res = gswa("influence", "--model", "tiny", "--image", "coffee", "--mode", "value", **NO_HUB)
    assert res.returncode == 0, res.stderr
    assert "value" in res.stdout


def test_a_misspelt_tiny_name_is_a_suggestion_not_a_download():
    res = gswa("visualize", "--model", "tiny-llava-nxt", "--image", "coffee", **NO_HUB)
    assert res.returncode == 2
    assert "did you mean `tiny-llava-next`?" in " ".join(res.stderr.split()), res.stderr
    assert "Traceback" not in res.stderr


def test_offline_hub_id_not_in_the_cache_fails_at_once(tmp_path):
    res = gswa(
        "diagnose",
        "--model",
        "some-org/some-model",
        "--image",
        "coffee",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
    )
    assert res.returncode == 2
    text = " ".join(res.stderr.split())
    assert "'some-org/some-model' is a hub id that is not in the local cache" in text and "HF_HUB_OFFLINE" in text
    assert "Traceback" not in res.stderr


def test_a_missing_image_folder_is_reported_before_the_model_loads(tmp_path):
    """`--model` points at nothing either: the image error must come first (the model was never touched)."""
    res = gswa("diagnose", "--image", str(tmp_path / "photos") + "/", "--model", str(tmp_path / "no-model"))
    assert res.returncode == 2
    assert f"image not found: {tmp_path / 'photos'}/ (--image takes" in " ".join(res.stderr.split()), res.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    res = gswa("visualize", "--image", str(empty), "--model", str(tmp_path / "no-model"))
    assert res.returncode == 2 and "no images" in res.stderr


def test_weight_map_has_a_colour_bar_and_the_note():
    """The caption band above the picture holds the colour scale (the colormap's gradient) and one
    more caption line for the note."""
    from gswa_plugin.testing.tiny import sample_image
    from gswa_plugin.tools.visualize import weight_map

    image = sample_image("coffee")
    plain = weight_map(image, [0.5, 1.5], (1, 2), legend=False, title="t")
    full = weight_map(image, [0.5, 1.5], (1, 2), title="t", note="model: tiny (built in code, RANDOM weights)")
    assert full.height - plain.height == 22 + 36  # one caption line and the bar
    band = np.asarray(full.convert("RGB"))[: full.height - plain.height + 30 - 22]
    colours = {tuple(p) for p in band.reshape(-1, 3)}
    assert len(colours) > 150, len(colours)  # a gradient, not two or three flat colours


def test_demo_says_random_weights_or_the_model_name(tmp_path, monkeypatch):
    from gswa_plugin.tools import demo, visualize

    notes = []
    real = visualize.weight_map
    monkeypatch.setattr(demo, "weight_map", lambda *a, **kw: notes.append(kw.get("note")) or real(*a, **kw))
    demo.run_demo(model="tiny-llava-next", out=tmp_path, max_new_tokens=1)
    assert notes[-1].startswith("model: tiny-llava-next (built in code, RANDOM weights)")
    res = gswa(
        "demo", "--model", "tiny-llava-onevision", "--out", str(tmp_path / "o"), "--max-new-tokens", "1", **NO_HUB
    )
    assert res.returncode == 0, res.stderr
    assert "built in code with random weights" in " ".join(res.stdout.split())
    with Image.open(tmp_path / "o" / "gswa_weights.png") as img:
        assert img.width == 768
