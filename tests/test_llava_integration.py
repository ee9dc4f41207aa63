"""The llava integration without the llava package: argument handling, layout reading, matching,
and the missing-package error. (With llava installed: tests/test_llava.py.)"""

from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml

from gswa_plugin.adapters.llava_torch import LlavaTorchAdapter, _views_per_image, is_llava_model
from gswa_plugin.errors import ConfigError, HostNotInstalledError
from gswa_plugin.integrations.llava.train import main, split_arguments


def test_our_two_options_are_taken_out_of_llavas_arguments():
    path, attn, rest = split_arguments(
        ["--model_name_or_path", "m", "--gswa_config", "g.yaml", "--attn_implementation=sdpa", "--bf16", "True"]
    )
    assert (path, attn, rest) == ("g.yaml", "sdpa", ["--model_name_or_path", "m", "--bf16", "True"])
    assert split_arguments(["--gswa_config=g.yaml"]) == ("g.yaml", None, [])


@pytest.mark.parametrize("argv", [[], ["--gswa_config"], ["--gswa_config", "--bf16"]])
def test_gswa_config_is_required(argv):
    with pytest.raises(ConfigError, match="gswa_config"):
        split_arguments(argv)


def test_an_invalid_gswa_config_fails_before_llava_starts(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"gswa": {"variant": "selfattn"}}))
    with pytest.raises(ConfigError, match="self_attn"):
        main(["--gswa_config", str(path)])


def test_missing_llava_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"gswa": {"variant": "self_attn"}}))
    monkeypatch.setitem(sys.modules, "llava", None)
    with pytest.raises(HostNotInstalledError, match=r"pip install --no-deps llava-torch==1.2.2.post1"):
        main(["--gswa_config", str(path)])


def test_views_per_image_from_llavas_images_argument():
    tile = torch.zeros(3, 8, 8)
    assert _views_per_image(torch.zeros(2, 5, 3, 8, 8), None) == [5, 5]  # anyres, same grid
    assert _views_per_image(torch.zeros(3, 3, 8, 8), None) == [1, 1, 1]  # one view per image
    assert _views_per_image([torch.zeros(5, 3, 8, 8), tile, torch.zeros(4, 3, 8, 8)], None) == [5, 1, 4]
    # LLaVA-NeXT: a video's frames are not tiles; each counts as a single view (weight 1)
    frames = torch.zeros(3, 3, 8, 8)
    assert _views_per_image([torch.zeros(5, 3, 8, 8), frames], ["image", "video"]) == [5, 1, 1, 1]
    assert _views_per_image(None, None) is None


def test_the_adapter_does_not_take_transformers_llava_next():
    from gswa_plugin.testing.tiny_hosts import tiny_llava_next

    model = tiny_llava_next()
    assert not is_llava_model(model)
    assert not LlavaTorchAdapter().matches(model)


def test_the_llava_next_recipe_is_valid():
    from pathlib import Path

    import gswa_plugin

    root = Path(__file__).resolve().parents[1] / "recipes" / "llava-next" / "llava"
    cfg = gswa_plugin.GSWAConfig.from_yaml(root / "gswa.yaml")
    assert cfg.variant == "self_attn" and cfg.identity_init
    script = (root / "finetune_gswa.sh").read_text()
    assert "gswa_plugin.integrations.llava.train" in script and "--gswa_config" in script
    assert "--image_aspect_ratio anyres" in script  # GSWA needs tiles


@pytest.mark.parametrize("zero", [None, "missing.json"], ids=["default", "missing"])
def test_the_llava_next_script_runs_from_any_directory(tmp_path, zero):
    """The README's command from another working directory: the default DeepSpeed config and the
    GSWA block resolve from the script's folder. `deepspeed` is a stand-in on PATH that records
    its arguments (the real launcher needs GPUs and the LLaVA-NeXT repository)."""
    import os
    import shlex
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "recipes" / "llava-next" / "llava" / "finetune_gswa.sh"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "deepspeed"
    stub.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n', encoding="utf-8")
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "ARGS_OUT": str(tmp_path / "args"),
           "NUM_GPUS": "1"}
    if zero:
        env["ZERO"] = zero
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run(["bash", str(script)], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    if zero:
        assert run.returncode == 2 and "DeepSpeed config not found: missing.json" in run.stderr
        return
    assert run.returncode == 0, run.stderr
    args = (tmp_path / "args").read_text().split("\n")
    for flag in ("--deepspeed", "--gswa_config"):
        path = Path(args[args.index(flag) + 1])
        assert path.is_absolute() and path.is_file(), (flag, path)
    assert json.loads(Path(args[args.index("--deepspeed") + 1]).read_text())["zero_optimization"]["stage"] == 3
    assert shlex.join(args[:3]) == "--num_gpus 1 --module"
