"""lmms-engine's real trainers, a few steps on CPU, with GSWA turned on from the YAML.

A tiny native InternVL (and LLaVA-OneVision) checkpoint and a tiny dataset in lmms-engine's format are written to disk
(:mod:`tests.hosts_lmms_engine.fixtures`); lmms-engine's CLI runs through gswa-plugin's launcher,
adapted to CPU at the boundary (:mod:`tests.hosts_lmms_engine.cpu_launch` says what is adapted).
Checked: GSWA was active (weights computed at every step, identity at the first), it trained
(its parameters moved), and it was saved (``<checkpoint>/gswa`` loads with ``gswa_plugin.load``
and matches the model's own checkpoint).

Runs in ``.venv-lmms-engine`` (CI step ``.ci/steps/30-lmms-engine.sh``):
``python -m pytest -m lmms_engine tests/test_lmms_engine.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("lmms_engine", reason="needs lmms-engine: pip install 'gswa-plugin[lmms-engine]'")

from safetensors.torch import load_file  # noqa: E402

import gswa_plugin  # noqa: E402
from tests.hosts_lmms_engine.fixtures import write_config  # noqa: E402

pytestmark = pytest.mark.lmms_engine

REPO = Path(__file__).resolve().parents[1]
STEPS = 3
BATCH = 2
#: run id -> (trainer type, ranks, model family)
RUNS = {
    "hf_trainer": ("hf_trainer", 1, "internvl"),
    "fsdp2_trainer": ("fsdp2_trainer", 1, "internvl"),
    "fsdp2_trainer-2ranks": ("fsdp2_trainer", 2, "internvl"),
    # lmms-engine's own LLaVA-OneVision support (its `llava` data processor), as in the recipe
    "llava_onevision-hf_trainer": ("hf_trainer", 1, "llava_onevision"),
}


def _run(root: Path, trainer_type: str, ranks: int, family: str) -> dict:
    config = write_config(root, trainer_type=trainer_type, steps=STEPS, family=family)
    return _launch(root, config, trainer_type, ranks)


def _launch(root: Path, config: Path, trainer_type: str, ranks: int) -> dict:
    log = root / "weights.jsonl"
    env = dict(os.environ, GSWA_TEST_WEIGHTS_LOG=str(log), WANDB_MODE="disabled", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", GSWA_PLUGINS="")
    # Hydra (lmms-engine's CLI) writes its run folder under the working directory unless told
    module = ["-m", "tests.hosts_lmms_engine.cpu_launch", f"config_yaml={config}", f"hydra.run.dir={root / 'hydra'}"]
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *module]
    else:
        cmd = [sys.executable, *module]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    model_dir = yaml.safe_load(config.read_text())["model_config"]["load_from_pretrained_path"]
    return {"root": root, "config": config, "log": lines, "ranks": ranks, "trainer": trainer_type, "model": model_dir,
            "stdout": proc.stdout, "stderr": proc.stderr}


@pytest.fixture(scope="module", params=list(RUNS))
def run(request, tmp_path_factory):
    trainer_type, ranks, family = RUNS[request.param]
    return _run(tmp_path_factory.mktemp(request.param), trainer_type, ranks, family)


def _initial_gswa(run) -> dict[str, torch.Tensor]:
    """GSWA's parameters as lmms-engine created them: the same model and GSWA block, enabled here."""
    from transformers import AutoModelForImageTextToText

    cfg = yaml.safe_load(run["config"].read_text())
    model = AutoModelForImageTextToText.from_pretrained(run["model"])
    gswa_plugin.enable(model, cfg["model_config"]["monkey_patch_kwargs"]["gswa"])
    return {k: v.detach().float().clone() for k, v in model.gswa.state_dict().items()}


def _final_dir(run) -> Path:
    out = run["root"] / "out"
    return out / "gswa" if run["trainer"] == "hf_trainer" else out / f"checkpoint-{STEPS}" / "gswa"


def test_gswa_was_active_at_every_step(run):
    for rank in range(run["ranks"]):
        steps = [line for line in run["log"] if line["rank"] == rank]
        assert len(steps) == STEPS, f"rank {rank}: {len(steps)} forwards with GSWA for {STEPS} steps"
        assert all(line["training"] for line in steps)
        assert all(len(line["weights"]) == BATCH for line in steps), "one weight vector per image"
        # identity at initialisation: the first step sees exactly 1 for every tile
        assert all(w == 1.0 for image in steps[0]["weights"] for w in image)
    later = [w for line in run["log"][1:] for image in line["weights"] for w in image]
    assert any(w != 1.0 for w in later), "weights never moved from 1"


def test_gswa_trained(run):
    start = _initial_gswa(run)
    final = load_file(str(_final_dir(run) / "gswa.safetensors"))
    assert set(final) == set(start)
    moved = [k for k in start if not torch.equal(final[k].float(), start[k])]
    assert moved, "no GSWA parameter changed during training"


def test_gswa_saved_with_every_checkpoint_and_loads(run):
    out = run["root"] / "out"
    for step in (2, STEPS):
        assert (out / f"checkpoint-{step}" / "gswa" / "gswa.safetensors").is_file()
    saved = _final_dir(run)
    sys.path.insert(0, str(REPO / "docs" / "examples"))
    try:
        from host_checkpoint import load_trained  # the docs' example
    finally:
        sys.path.pop(0)
    model = load_trained(run["model"], str(saved.parent))
    assert model.config.model_type == Path(run["model"]).name.removeprefix("tiny-").replace("-", "_")
    expected = load_file(str(saved / "gswa.safetensors"))
    for k, v in model.gswa.state_dict().items():
        torch.testing.assert_close(v, expected[k].to(v.dtype), rtol=0, atol=0)  # fsdp2 ran in bf16
    if run["trainer"] == "hf_trainer":
        # the host's own checkpoint carries the same tensors under `gswa.`
        host = load_file(str(out / f"checkpoint-{STEPS}" / "model.safetensors"))
        ckpt = load_file(str(out / f"checkpoint-{STEPS}" / "gswa" / "gswa.safetensors"))
        for k, v in ckpt.items():
            torch.testing.assert_close(host[f"gswa.{k}"], v, rtol=0, atol=0)


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_value_mode_trains_under_gradient_checkpointing(tmp_path, reentrant):
    """Issue 12: 20 steps with ``mode: value`` and lmms-engine's ``gradient_checkpointing`` (the
    recipes turn it on) move GSWA's parameters, with either kind of checkpointing."""
    steps = 20
    config = write_config(tmp_path, steps=steps, gswa={"mode": "value"})
    data = yaml.safe_load(config.read_text())
    data["trainer_args"].update(
        gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": reentrant}, save_steps=steps
    )
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    run = _launch(tmp_path, config, "hf_trainer", 1)
    assert len(run["log"]) == steps
    start = _initial_gswa(run)
    final = load_file(str(tmp_path / "out" / "gswa" / "gswa.safetensors"))
    moved = {k: float((final[k].float() - start[k]).abs().max()) for k in start}
    assert all(torch.isfinite(torch.tensor(list(moved.values()))))
    assert max(moved.values()) > 1e-4, f"GSWA did not train under checkpointing: {moved}"
    later = [w for line in run["log"][1:] for image in line["weights"] for w in image]
    assert any(w != 1.0 for w in later), "the weights never left 1"


def test_distinct_weight_is_collected_by_hf_trainer(tmp_path):
    """``distinct_weight`` in the YAML: lmms-engine's ``hf_trainer`` adds the term to its loss (no
    warning that it was never collected)."""
    gswa = {"mode": "value", "distinct_weight": 1.0}
    config = write_config(tmp_path, trainer_type="hf_trainer", steps=STEPS, gswa=gswa)
    run = _launch(tmp_path, config, "hf_trainer", 1)
    assert "was never collected" not in run["stderr"], run["stderr"][-3000:]


def _fsdp2_losses(stdout: str) -> list[float]:
    """``train/loss`` of every step, from the metrics lmms-engine's ``Tracking.log`` prints."""
    return [float(m) for m in re.findall(r"'train/loss': ([-+0-9.eE]+)", stdout)]


def test_distinct_weight_is_added_to_the_fsdp2_trainer_loss(tmp_path):
    """``distinct_weight: 1`` with lmms-engine's ``fsdp2_trainer``, against the same run with 0: no
    warning that the term was never collected; the first step's loss (GSWA still the identity, so
    the task loss is the same in both runs) is larger by the term; GSWA's parameters end elsewhere
    (the term's gradient reached them). On the code before the trainer collected it, both runs
    gave identical losses and parameters, and the warning."""
    runs = {}
    for weight in (1.0, 0.0):
        root = tmp_path / f"w{weight:g}"
        root.mkdir()
        config = write_config(root, trainer_type="fsdp2_trainer", steps=STEPS,
                              gswa={"mode": "value", "distinct_weight": weight})
        runs[weight] = _launch(root, config, "fsdp2_trainer", 1)
    assert "was never collected" not in runs[1.0]["stderr"], runs[1.0]["stderr"][-3000:]
    on, off = (_fsdp2_losses(runs[w]["stdout"]) for w in (1.0, 0.0))
    assert len(on) == len(off) == STEPS, (on, off)
    assert runs[1.0]["log"][0]["weights"] == runs[0.0]["log"][0]["weights"]  # identity at step 1 in both
    assert on[0] - off[0] > 1e-2, f"the logged loss lacks the term: {on[0]} with it, {off[0]} without"
    final = {w: load_file(str(runs[w]["root"] / "out" / f"checkpoint-{STEPS}" / "gswa" / "gswa.safetensors"))
             for w in runs}
    moved = [k for k in final[1.0] if not torch.equal(final[1.0][k], final[0.0][k])]
    assert moved, "the term did not change GSWA's training"


def test_fsdp2_training_step_scales_the_term_like_the_task_loss(tmp_path):
    """lmms-engine's own ``FSDP2SFTTrainer.training_step`` (run here on the tiny model, one gloo
    rank, the first of 2 accumulated micro-batches) in GSWA's ``fsdp2_trainer``: GSWA's gradient is
    that of ``(task loss + term) / 2``, the term divided by the accumulation steps exactly once,
    like the task loss. On the code before the trainer collected it, it was that of
    ``task loss / 2``."""
    from types import SimpleNamespace

    import torch.distributed as dist
    from lmms_engine.train.registry import TRAINER_REGISTER

    from gswa_plugin.integrations.lmms_engine import register
    from gswa_plugin.testing.tiny import sample_image, tiny_internvl, tiny_internvl_processor

    register()
    processor = tiny_internvl_processor(image_size=56, max_patches=6)
    text, images = ["<IMG_CONTEXT> describe the image"], [sample_image("coffee")]
    batch = dict(processor(text=text, images=images, return_tensors="pt"))
    batch["labels"] = batch["input_ids"]
    model = tiny_internvl(image_size=56)
    gswa_plugin.enable(model, {"mode": "value", "summary": "mean", "score_input": "squared_deviation",
                               "hidden_size": 32, "num_heads": 4, "distinct_weight": 1.0})
    params = dict(model.gswa.named_parameters())

    def gswa_grads() -> dict[str, torch.Tensor]:
        grads = {k: p.grad.detach().clone() for k, p in params.items() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return grads

    trainer = object.__new__(TRAINER_REGISTER["fsdp2_trainer"])  # only what training_step reads
    trainer.model = trainer.fsdp2_model = model
    trainer.args = SimpleNamespace(bf16=False, gradient_accumulation_steps=2, device="cpu")
    trainer.optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer.scheduler = SimpleNamespace(get_last_lr=lambda: [0.0])
    trainer.accumulated_grad_steps = 0
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        metrics = trainer.training_step(batch)
    finally:
        dist.destroy_process_group()
    assert trainer.accumulated_grad_steps == 1  # accumulating: no optimizer step yet
    stepped = gswa_grads()
    model.train()
    task = model(**batch).loss
    aux = gswa_plugin.aux_loss(model)
    assert float(aux.detach()) > 0
    ((task + aux) / 2).backward()
    expected = gswa_grads()
    (model(**batch).loss / 2).backward()
    gswa_plugin.aux_loss(model)
    task_only = gswa_grads()
    assert set(stepped) == set(expected)
    for k in expected:
        torch.testing.assert_close(stepped[k], expected[k])
    assert any(not torch.allclose(expected[k], task_only.get(k, torch.zeros_like(expected[k]))) for k in expected)
    # logged undivided, with the term
    assert metrics["train/loss"] == pytest.approx(float((task + aux).detach()), rel=1e-5)
