"""lmms-eval itself, offline, with the gswa models found through its entry-point group.

Runs in the ``.venv-lmms-eval`` environment (lmms-eval 0.7.3 and its real dependencies; see
``.ci/steps/50-lmms-eval.sh``), marked ``lmms_eval`` and so left out of the default run. Tiny
hosts are saved as local checkpoints; tiny copies of the MME, OCRBench and RealWorldQA datasets
in their real formats (``tests/lmms_eval_data``) sit where ``datasets`` finds a local copy of
the hub dataset each task names, so lmms-eval's own task code runs unchanged and offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytestmark = pytest.mark.lmms_eval

pytest.importorskip("lmms_eval", reason="lmms-eval is installed only in .venv-lmms-eval (.ci/steps/50-lmms-eval.sh)")

import gswa_plugin  # noqa: E402
from gswa_plugin.tools import inspect as it  # noqa: E402
from tests.lmms_eval_data import write_task_data  # noqa: E402

TASKS = "mme,ocrbench,realworldqa"
TASK_METRICS = {
    "mme": ("mme_perception_score", "mme_cognition_score"),
    "ocrbench": ("ocrbench_accuracy",),
    "realworldqa": ("exact_match",),
}
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _tiny(family: str):
    """A tiny host and its real processor, built so that it saves and loads as a checkpoint
    (with torchvision installed, transformers wants a video processor in these processors)."""
    from gswa_plugin.testing import tiny_hosts as th
    from gswa_plugin.testing.tiny import tiny_internvl, tiny_tokenizer

    if family == "internvl":
        from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

        ip = GotOcr2ImageProcessor(
            size={"height": 56, "width": 56},
            crop_to_patches=True,
            min_patches=1,
            max_patches=6,
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        )
        proc = InternVLProcessor(
            image_processor=ip, tokenizer=tiny_tokenizer(), video_processor=InternVLVideoProcessor(), image_seq_length=4
        )
        return tiny_internvl(image_size=56), proc
    if family == "llava_next":
        return th.tiny_llava_next(), th.tiny_llava_next_processor()
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    ip = LlavaOnevisionImageProcessor(size={"height": 56, "width": 56}, image_grid_pinpoints=th.anyres_pinpoints(56, 4))
    proc = LlavaOnevisionProcessor(
        image_processor=ip,
        tokenizer=tiny_tokenizer(),
        video_processor=LlavaOnevisionVideoProcessor(),
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    return th.tiny_llava_onevision(), proc


def _answers_in_words(model):
    """Keep the tiny host from generating special tokens (which decode to nothing), so that its
    answers are words that can be compared between runs; saved with the checkpoint."""
    from gswa_plugin.testing.tiny import SPECIAL_TOKENS

    model.generation_config.suppress_tokens = list(range(len(SPECIAL_TOKENS)))
    return model


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working directory holding the tiny datasets at their hub paths."""
    root = tmp_path_factory.mktemp("lmms_eval_run")
    write_task_data(root)
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> (host checkpoint dir, saved cosine GSWA dir, saved identity self_attn GSWA dir)."""
    out = {}
    for family in ("internvl", "llava_next", "llava_onevision"):
        root = tmp_path_factory.mktemp(family)
        model, proc = _tiny(family)
        _answers_in_words(model)
        model.save_pretrained(root / "host")
        proc.save_pretrained(root / "host")
        gswa_plugin.enable(model, {"variant": "cosine", "cosine_temperature": 0.05})
        gswa_plugin.save(model, root / "gswa_cosine")
        gswa_plugin.disable(model)
        gswa_plugin.enable(model, {"variant": "self_attn", "hidden_size": 32, "num_heads": 4})
        gswa_plugin.save(model, root / "gswa_self_attn")
        gswa_plugin.disable(model)
        out[family] = (root / "host", root / "gswa_cosine", root / "gswa_self_attn")
    return out


def _run_cli(workdir: Path, model: str, model_args: str, out: Path) -> tuple[subprocess.CompletedProcess, dict]:
    cmd = [
        sys.executable, "-m", "lmms_eval",
        "--model", model,
        "--model_args", model_args,
        "--tasks", TASKS,
        "--device", "cpu",
        "--batch_size", "1",
        "--output_path", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=workdir, env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=900)
    found = sorted(out.rglob("*_results.json"))
    results = json.loads(found[-1].read_text()) if found else {}
    return proc, results


def test_lmms_eval_discovers_the_gswa_models_through_its_entry_point():
    from lmms_eval import models

    eps = {ep.name: ep.value for ep in entry_points(group="lmms_eval.models")}
    assert eps.get("gswa") == "gswa_plugin.integrations.lmms_eval:manifests"
    names = models.list_available_models()
    for name in ("gswa_internvl", "gswa_llava_next", "gswa_llava_onevision", "gswa_hf"):
        assert name in names
    assert models.get_model("gswa_internvl").__name__ == "GSWAInternVL"


@pytest.mark.parametrize("family", ["internvl", "llava_onevision", "llava_next"])
def test_lmms_eval_cli_runs_the_three_tasks_offline(family, workdir, checkpoints, tmp_path):
    host, cosine, _ = checkpoints[family]
    proc, results = _run_cli(
        workdir, f"gswa_{family}", f"pretrained={host},gswa={cosine},max_tiles=4,max_new_tokens=4", tmp_path / "gswa"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    table = proc.stdout
    for task, metrics in TASK_METRICS.items():
        assert task in results["results"], results.get("results")
        for metric in metrics:
            assert any(k.startswith(metric) for k in results["results"][task]), (task, results["results"][task])
            assert metric in table
    assert results["config"]["model"] == f"gswa_{family}"
    if family != "internvl":
        return  # the baseline path is the same code for every family; run it once to keep CI short
    # the baseline: same model and run setup, GSWA off
    proc, base = _run_cli(workdir, f"gswa_{family}", f"pretrained={host},gswa=none,max_tiles=4,max_new_tokens=4", tmp_path / "base")
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert set(base["results"]) == set(results["results"])


def test_identity_gswa_and_k0_removal_answer_exactly_as_the_baseline(workdir, checkpoints, monkeypatch):
    host, cosine, identity = checkpoints["internvl"]
    monkeypatch.chdir(workdir)
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)

    def answers(gswa, **more):
        args = {"pretrained": str(host), "gswa": str(gswa), "max_tiles": 4, "max_new_tokens": 4, **more}
        return it.task_answers(it.run_lmms_eval(args, ["mme"], "gswa_internvl"))["mme"]

    base = answers("none")
    assert len(base) == 6 and all(a.strip() for a in base)  # the tiny host answers in words
    assert answers(identity) == base  # an untrained self_attn GSWA is the identity
    cos = answers(cosine)
    assert answers(cosine, **it.removal_model_args(it.RemovalSpec(k=0))) == cos
    assert answers(cosine, **it.removal_model_args(it.RemovalSpec(k=2, mode="drop"))) != cos
    # the experiment wrappers: scores with and without removal, and per checkpoint
    extra = {"max_tiles": 4, "max_new_tokens": 4}
    removal = it.remove_tiles_on_task(
        str(host), str(cosine), it.RemovalSpec(k=1, by="similarity"), ["ocrbench"], "gswa_internvl", extra_args=extra
    )
    assert set(removal["ocrbench"]) >= {"ocrbench_accuracy"}
    scores = it.ablate_on_task(str(host), {"cosine": str(cosine)}, ["realworldqa"], "gswa_internvl", extra_args=extra)
    assert set(scores) == {"none", "cosine"} and "exact_match" in scores["cosine"]["realworldqa"]


def test_bad_model_args_are_reported(checkpoints):
    from gswa_plugin.errors import GSWAError
    from gswa_plugin.integrations.lmms_eval import GSWAInternVL, GSWALlavaNext, WrongFamilyError

    host, cosine, _ = checkpoints["internvl"]
    with pytest.raises(GSWAError, match="say which GSWA"):
        GSWAInternVL(pretrained=str(host))
    with pytest.raises(GSWAError, match="neither a saved GSWA directory"):
        GSWAInternVL(pretrained=str(host), gswa="/no/such/dir")
    with pytest.raises(WrongFamilyError, match="gswa_hf"):
        GSWALlavaNext(pretrained=str(host), gswa="none")
    with pytest.raises(TypeError, match="unknown model_args"):
        GSWAInternVL(pretrained=str(host), gswa="none", tiles=3)
    m = GSWAInternVL(pretrained=str(host), gswa=str(cosine), max_tiles=2)
    assert m.processor.image_processor.max_patches == 2


@pytest.mark.parametrize("family", ["internvl", "llava_onevision"])
def test_gswa_visualize_and_diagnose_load_a_saved_checkpoint(family, checkpoints, tmp_path):
    """``--model DIR`` loads a real checkpoint directory (here, where torchvision is installed)."""
    from typer.testing import CliRunner

    from gswa_plugin.cli import app

    host, cosine, identity = checkpoints[family]
    runner = CliRunner()
    res = runner.invoke(app, ["visualize", "--model", str(host), "--gswa", str(cosine), "-i", "coffee", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "coffee.png").is_file()
    res = runner.invoke(app, ["diagnose", "--model", str(host), "--gswa", str(identity), "-i", "coffee", "-i", "chelsea", "--fail"])
    assert res.exit_code == 1 and "uniform" in res.output, res.output


def test_keep_model_argument_sets_the_token_budget(workdir, checkpoints, monkeypatch):
    from gswa_plugin.errors import GSWAError
    from gswa_plugin.integrations.lmms_eval import GSWAInternVL

    host, cosine, _ = checkpoints["internvl"]
    monkeypatch.chdir(workdir)
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    lm = GSWAInternVL(pretrained=str(host), gswa=str(cosine), keep="0.5", budget_method="uniform")
    assert (lm.handle.config.budget.keep, lm.handle.config.budget.method) == (0.5, "uniform")
    assert GSWAInternVL(pretrained=str(host), gswa=str(cosine), keep="64").handle.config.budget.keep == 64
    with pytest.raises(GSWAError, match="gswa=none"):
        GSWAInternVL(pretrained=str(host), gswa="none", keep="0.5")
    args = {"pretrained": str(host), "gswa": str(cosine), "max_tiles": 4, "max_new_tokens": 4, "keep": 0.5}
    answers = it.task_answers(it.run_lmms_eval(args, ["mme"], "gswa_internvl"))["mme"]
    assert len(answers) == 6 and all(a.strip() for a in answers)
