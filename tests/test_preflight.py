"""`gswa train --check` is a real preflight: what the recipe names is checked on this machine, each
problem names the recipe key to change, and a real run refuses to start into any of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from gswa_plugin.integrations.transformers import smoke
from gswa_plugin.integrations.transformers.config import TrainConfig, load_recipe
from gswa_plugin.integrations.transformers.preflight import PreflightError, preflight

SCRIPT = Path(sys.executable).parent / ("gswa.exe" if os.name == "nt" else "gswa")
REPO = Path(__file__).resolve().parent.parent


def gswa(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "COLUMNS": "400", **env}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=300, check=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny offline training setup: a saved InternVL checkpoint, JPEG photographs, a recipe."""
    root = tmp_path_factory.mktemp("preflight")
    return smoke.write_setup(root)


def cfg_with(recipe: Path, **changes) -> TrainConfig:
    return load_recipe(recipe, [f"{k}={v}" for k, v in changes.items()])


def test_the_smoke_recipe_passes_with_every_image_decoded(setup):
    res = gswa("train", str(setup), "--check")
    assert res.returncode == 0, res.stderr
    assert "ok" in res.stdout and "4 record(s), 4 image(s) checked" in res.stdout


def test_the_sleighvl_recipe_on_a_machine_without_its_model_and_data(tmp_path):
    """The README's command: on this machine each missing thing is listed with its key, in one run."""
    recipe = REPO / "recipes/internvl2-2b/transformers/sleighvl-gswa-only.yaml"
    res = gswa("train", str(recipe), "--check", f"training_args.output_dir={tmp_path / 'out'}")
    assert res.returncode == 2
    text = " ".join(res.stderr.split())
    assert f"recipe {recipe} cannot run on this machine" in text
    assert "`model.name_or_path`: no such directory /models/InternVL2-2B-native" in text
    assert "`data.train_files`: data file not found: data/sleighvl_mix.jsonl" in text
    if not torch.cuda.is_available():
        assert "`training_args.bf16: true` needs a GPU with bfloat16" in text and "`training_args.bf16: false`" in text
    assert "Traceback" not in res.stderr and "FutureWarning" not in res.stderr


def test_images_are_found_and_decoded(setup, tmp_path):
    data = yaml.safe_load(setup.read_text())["data"]["train_files"][0]
    records = [json.loads(line) for line in Path(data).read_text().splitlines()]
    broken = Path(data).parent / "images" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    records[0]["image"] = "images/broken.jpg"
    records[1]["image"] = "images/missing.jpg"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    cfg = cfg_with(setup, **{"data.train_files": f"[{bad}]", "data.image_root": str(Path(data).parent)})
    report = preflight(cfg)
    text = "\n".join(report.problems)
    assert f"`data.train_files`: {bad}:1: image {broken} cannot be decoded" in text
    assert "`data.train_files`: " + f"{bad}:2: image not found: " in text and "missing.jpg" in text
    assert "`data.on_missing_image: skip`" in text
    # without decoding (what a real run checks) only the missing file is a problem
    assert len([p for p in preflight(cfg, decode_images=False).problems if "image" in p and ":1:" in p]) == 0
    skip = preflight(
        cfg_with(
            setup,
            **{
                "data.train_files": f"[{bad}]",
                "data.image_root": str(Path(data).parent),
                "data.on_missing_image": "skip",
            },
        )
    )
    assert not skip.problems and "2 record(s) with a missing or unreadable image will be skipped" in skip.notes[0]


def test_missing_files_model_and_gswa_checkpoint(setup, tmp_path):
    cfg = cfg_with(
        setup,
        **{
            "data.train_files": f"[{tmp_path / 'nope.jsonl'}]",
            "model.gswa_checkpoint": str(tmp_path / "no-gswa"),
            "model.processor": str(tmp_path / "no-processor"),
        },
    )
    text = "\n".join(preflight(cfg).problems)
    assert f"`data.train_files`: data file not found: {tmp_path / 'nope.jsonl'}" in text
    assert f"`model.gswa_checkpoint`: {tmp_path / 'no-gswa'} is not a saved GSWA directory" in text
    assert f"`model.processor`: no such directory {tmp_path / 'no-processor'}" in text


def test_an_offline_hub_id_that_is_not_cached(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    cfg = cfg_with(setup, **{"model.name_or_path": "OpenGVLab/InternVL2-2B"})
    (problem,) = [p for p in preflight(cfg).problems if p.startswith("`model.name_or_path`")]
    assert "'OpenGVLab/InternVL2-2B' is a hub id that is not in the local cache" in problem
    assert "HF_HUB_OFFLINE" in problem


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_precision_and_launcher_packages(setup, tmp_path):
    cfg = cfg_with(setup, **{"training_args.use_cpu": "false", "training_args.bf16": "true"})
    (problem,) = preflight(cfg).problems
    assert problem.startswith("`training_args.bf16: true` needs a GPU") and "`training_args.use_cpu: true`" in problem
    cfg = cfg_with(setup, **{"training_args.deepspeed": str(tmp_path / "zero2.json")})
    text = "\n".join(preflight(cfg).problems)
    assert f"`training_args.deepspeed`: no such file {tmp_path / 'zero2.json'}" in text


def test_deprecated_training_keys_are_named_with_their_successor(setup):
    report = preflight(cfg_with(setup, **{"training_args.gradient_checkpointing": "true"}))
    assert not report.problems
    assert (
        "`training_args.gradient_checkpointing` is deprecated in transformers: rename it `activation_checkpointing`"
        in (report.notes)
    )
    for recipe in sorted((REPO / "recipes/internvl2-2b/transformers").glob("*.yaml")):
        args = yaml.safe_load(recipe.read_text())["training_args"]
        assert "gradient_checkpointing" not in args and "gradient_checkpointing_kwargs" not in args, recipe


def test_output_dir_and_resume(setup, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cfg = cfg_with(setup, **{"training_args.output_dir": str(a_file / "run")})
    assert any("`training_args.output_dir`" in p and "is a file" in p for p in preflight(cfg).problems)

    out = tmp_path / "run"
    cfg = cfg_with(setup, **{"training_args.output_dir": str(out)})
    (problem,) = preflight(cfg, resume=True).problems
    assert problem.startswith("`--resume` asks for the latest checkpoint") and "holds no complete checkpoint-N" in problem
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "trainer_state.json").write_text("{}")
    report = preflight(cfg, resume=True)  # the only checkpoint is incomplete: skipped, and said why
    (problem,) = report.problems
    assert "no complete checkpoint-N directory (1 incomplete" in problem
    assert any(n.startswith("`--resume`: skipping checkpoint-2:") for n in report.notes), report.notes
    (problem,) = preflight(cfg, resume=str(out / "checkpoint-9")).problems
    assert problem.startswith(f"`--resume`: {out / 'checkpoint-9'} cannot be resumed from: it is not a directory")


def test_a_real_run_stops_before_loading_anything(setup, tmp_path, monkeypatch):
    from gswa_plugin.integrations.transformers import run

    monkeypatch.setattr(run, "build_trainer", lambda cfg: pytest.fail("the run started despite the preflight"))
    cfg = cfg_with(setup, **{"data.train_files": f"[{tmp_path / 'nope.jsonl'}]"})
    with pytest.raises(PreflightError) as info:
        run.train(cfg, source="recipe.yaml")
    assert isinstance(info.value, ValueError) and "`data.train_files`: data file not found" in str(info.value)
    res = gswa("train", str(setup), f"data.train_files=[{tmp_path / 'nope.jsonl'}]")
    assert res.returncode == 2 and "cannot run on this machine" in res.stderr and "Traceback" not in res.stderr
