"""The README's baseline -> train -> evaluate sequence, run end to end on a tiny checkpoint (CI).

Each SleighVL recipe README has a section "Baseline, training and evaluation" whose ``bash``
block is what a researcher runs on GPUs: convert InternVL2-2B, build the data, evaluate the
baseline with lmms-eval (6 tiles for MME and RealWorldQA, 24 for OCRBench), check it with
``paper_metrics.py``, train with that framework's recipe, evaluate the trained run the same way
and print the deltas. This script reads that block from the README and runs it, command for
command, on a tiny stand-in: a random InternVL2 in the released remote-code layout
(``gswa_plugin.testing.tiny_internvl2``), converted by the README's own ``gswa
convert-internvl2``; four scikit-image photographs as "LLaVA-1.5"; and tiny local copies of MME,
RealWorldQA and OCRBench in their real formats (``tests/lmms_eval_data``). So the README cannot
drift from what CI runs: a command this script does not know stops it.

Only what a tiny CPU machine needs is changed, and every change is printed beside the README's
command (``TINY`` below): paths under ``/models`` and ``/data`` move into the work folder;
fp32 weights and CPU; two optimizer steps of batch 2; 8 new tokens per answer; the
multi-GPU launcher replaced by the two-process CPU one (transformers) or by the CPU launcher of
the lmms-engine tests (``tests/hosts_lmms_engine/cpu_launch.py``, which adapts lmms-engine's
CUDA-only calls); the baseline check reports instead of failing (a random model is not
InternVL2-2B). The scores of a random tiny model are meaningless; what is checked is that every
step runs and hands its output to the next, and that the three metrics and deltas are printed.

Usage (from the repository root; each framework and lmms-eval in its own environment)::

    python recipes/internvl2-2b/e2e.py transformers --work /tmp/e2e-tf --eval-python .venv-lmms-eval/bin/python
    python recipes/internvl2-2b/e2e.py lmms-engine --work /tmp/e2e-le --eval-python .venv-lmms-eval/bin/python \\
        --engine-python .venv-lmms-engine/bin/python
    python recipes/internvl2-2b/e2e.py llava --work /tmp/e2e-ll --eval-python .venv-lmms-eval/bin/python \\
        --llava-python .venv-llava/bin/python

The llava recipe (``recipes/llava-next/llava/README.md``) starts from a tiny LLaVA-1.6 in llava's
own layout (llava's classes, in the llava environment) instead, converts it with ``gswa
convert-llava``, and trains with ``finetune_gswa.sh`` as written, its ``deepspeed`` replaced by the
one-process CPU stand-in ``recipes/llava-next/llava/cpu_launch.py`` (which prints what it changes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import yaml

REPO = Path(__file__).resolve().parents[2]
RECIPES = Path(__file__).resolve().parent
READMES = {
    "transformers": RECIPES / "transformers" / "README.md",
    "lmms-engine": RECIPES / "lmms-engine" / "README.md",
    "llava": REPO / "recipes" / "llava-next" / "llava" / "README.md",
}
SECTION = "## Baseline, training and evaluation"
#: Records in the tiny "LLaVA-1.5 mix" (the four smoke photographs, twice).
TINY_RECORDS = 8
#: What the tiny CPU run changes, per command (printed with each command).
TINY = {
    "paths": "/models/... and /data/... -> the work folder",
    "lmms-eval": "dtype=bfloat16 -> dtype=float32,max_new_tokens=8; --device cpu",
    "prepare_data": f"--total 602000 -> --total {TINY_RECORDS} (the tiny source's size)",
    "paper_metrics": "--no-check (a random tiny model is not InternVL2-2B)",
    "gswa train": "fp32, CPU, 2 steps of batch 2, no workers, no reporting; launcher: accelerate/cpu_2proc.yaml",
    "lmms-engine": "the YAML with CPU, 2 steps of batch 2, no workers; launcher tests.hosts_lmms_engine.cpu_launch",
    "finetune_gswa.sh": "the script as written, its `deepspeed` replaced by recipes/llava-next/llava/cpu_launch.py in "
    "the llava environment (prints what it drops and appends: CPU, fp32, 2 steps of batch 2, --version plain, "
    "the tiny CLIP tower)",
    "prepare_data_all": "the tiny source as it is (8 records)",
}
#: The tiny LLaVA-1.6 in llava's layout and its CLIP tower (run in the llava environment). The tiny
#: tokenizer's largest id is len(tokenizer) (one id is unused), hence one more embedding row.
LLAVA_CODE = """
import shutil, sys
from pathlib import Path
import torch
from transformers import CLIPVisionModel
from gswa_plugin.testing.tiny import tiny_tokenizer
from tests.host_cases.llava_torch import tiny_llava, tower_dir
models = Path(sys.argv[1])
tower = models / "clip-vit-large-patch14-336"
shutil.copytree(tower_dir(), tower)
# llava-torch's train() casts the frozen tower to float16 when bf16 is off: a tower whose values
# float16 holds exactly stays what it was, so the check that it did not train can be exact
clip = CLIPVisionModel.from_pretrained(tower)
with torch.no_grad():
    for p in clip.parameters():
        p.copy_(p.half().float())
clip.save_pretrained(tower)
model = tiny_llava(vocab_size=len(tiny_tokenizer()) + 1, mm_vision_tower=str(tower))
model.save_pretrained(models / "llava-v1.6-vicuna-7b")
tiny_tokenizer().save_pretrained(models / "llava-v1.6-vicuna-7b")
"""
TRAIN_OVERRIDES = [
    "model.dtype=float32",
    "training_args.bf16=false",
    "training_args.use_cpu=true",
    "training_args.max_steps=2",
    "training_args.save_steps=2",
    "training_args.per_device_train_batch_size=2",
    "training_args.gradient_accumulation_steps=1",
    "training_args.dataloader_num_workers=0",
    "training_args.report_to=none",
]
ENGINE_OVERRIDES = {
    "use_cpu": True,
    "max_steps": 2,
    "save_steps": 2,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "dataloader_num_workers": 0,
    "dataloader_pin_memory": False,
}


def readme_commands(readme: Path) -> list[str]:
    """The shell commands of the first ``bash`` block after ``SECTION`` (continuations joined,
    comments and blank lines dropped)."""
    text = readme.read_text(encoding="utf-8")
    if SECTION not in text:
        raise SystemExit(f"{readme}: no section {SECTION!r}")
    block = re.search(r"```bash\n(.*?)```", text[text.index(SECTION):], re.S)
    if block is None:
        raise SystemExit(f"{readme}: no ```bash block in {SECTION!r}")
    joined = re.sub(r"\\\n\s*", "", block.group(1))
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def _engine_yaml(config_yaml: str, work: Path) -> Path:
    """The lmms-engine recipe YAML with the tiny run's changes, written into the work folder."""
    text = _move_paths((REPO / config_yaml).read_text(encoding="utf-8"), work)
    config = yaml.safe_load(text)
    config["trainer_args"].update(ENGINE_OVERRIDES)
    out = work / ("tiny-" + Path(config_yaml).name)
    out.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return out


def _move_paths(text: str, work: Path) -> str:
    return re.sub(r"(?<=[\s=:\[])/(models|data)/", lambda m: f"{work}/{m.group(1)}/", text)


def tiny_command(cmd: str, work: Path, py: dict[str, str]) -> tuple[str | None, str]:
    """(the command the tiny run executes or None to skip it, what was changed)."""
    cmd = _move_paths(cmd, work)
    q = shlex.quote
    if cmd.startswith("pip install"):
        return None, "skipped: the environments are prepared by the CI steps"
    m = re.match(r"((?:[A-Z]\w*=\S+ )*)bash recipes/llava-next/llava/finetune_gswa\.sh$", cmd)
    if m:
        shim = work / "bin"
        return f"LLAVA_TINY_TOWER={q(str(work / 'models' / 'clip-vit-large-patch14-336'))} PATH={q(str(shim))}:$PATH {cmd}", TINY["finetune_gswa.sh"]
    if re.match(r"[A-Z]\w*=", cmd):
        return cmd, ""
    if cmd.startswith(("gswa convert-internvl2 ", "gswa convert-llava ")):
        return cmd, TINY["paths"]
    if cmd.startswith("lmms-eval "):
        if "dtype=bfloat16" not in cmd:
            raise SystemExit(f"README lmms-eval command without dtype=bfloat16; update {__file__}: {cmd}")
        run = cmd.replace("lmms-eval ", f"{q(py['eval'])} -m lmms_eval ", 1)
        return run.replace("dtype=bfloat16", "dtype=float32,max_new_tokens=8") + " --device cpu", TINY["lmms-eval"]
    if cmd.startswith("python recipes/internvl2-2b/paper_metrics.py "):
        if "--no-check" in cmd or "--reference none" in cmd:  # the README already reports only (no published number applies)
            return cmd, ""
        return cmd + " --no-check", TINY["paper_metrics"]
    if cmd.startswith("python recipes/internvl2-2b/transformers/prepare_data.py "):
        if "--total" not in cmd:  # the whole source (the LLaVA-NeXT data)
            return cmd, TINY["prepare_data_all"]
        if "--total 602000" not in cmd:
            raise SystemExit(f"README data command without --total 602000; update {__file__}: {cmd}")
        return cmd.replace("--total 602000", f"--total {TINY_RECORDS}"), TINY["prepare_data"]
    m = re.match(r"accelerate launch --config_file \S+ -m gswa_plugin\.cli train (.*)", cmd)
    if m:
        cpu = "recipes/internvl2-2b/transformers/accelerate/cpu_2proc.yaml"
        run = f"accelerate launch --config_file {cpu} -m gswa_plugin.cli train {m.group(1)} " + " ".join(TRAIN_OVERRIDES)
        return run, TINY["gswa train"]
    if cmd.startswith("gswa train "):
        return cmd + " " + " ".join(TRAIN_OVERRIDES), TINY["gswa train"]
    m = re.match(r"python -m gswa_plugin\.integrations\.lmms_engine\.launch config_yaml=(\S+)$", cmd)
    if m:
        tiny = _engine_yaml(m.group(1), work)
        run = f"{q(py['engine'])} -m tests.hosts_lmms_engine.cpu_launch config_yaml={q(str(tiny))} hydra.run.dir={q(str(work / 'hydra'))}"
        return run, TINY["lmms-engine"]
    if cmd.startswith("python -m gswa_plugin.integrations.lmms_engine.merge "):
        return cmd.replace("python ", f"{q(py['engine'])} ", 1), "run in the lmms-engine environment"
    raise SystemExit(f"a README command the tiny run does not know (teach {__file__} or fix the README): {cmd}")


def _tiny_records(folder: Path) -> list[dict]:
    """``TINY_RECORDS`` llava-format records over the smoke photographs in ``folder/images``."""
    from gswa_plugin.integrations.transformers.smoke import write_data

    jsonl = write_data(folder, formats=("llava",))[0]
    records = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    jsonl.unlink()
    return [dict(r, id=f"{r['id']}-{copy}") for copy in range(TINY_RECORDS // len(records)) for r in records]


def write_inputs(work: Path, eval_python: str, framework: str = "transformers", llava_python: str = "") -> None:
    """The tiny starting checkpoint (a released-layout InternVL2, or for llava a LLaVA-1.6 in
    llava's layout with its CLIP tower and a CPU ``deepspeed`` stand-in), the tiny data in the
    layout the README's data command reads, the benchmark copies."""
    if framework == "llava":
        subprocess.run([llava_python, "-c", LLAVA_CODE, str(work / "models")], check=True, cwd=REPO, env=_env())
        root = work / "data" / "llava-next"
        # LLaVA-NeXT-Data's layout: the JSON's image paths are relative to the unpacked images
        records = [dict(r, image=r["image"].removeprefix("images/")) for r in _tiny_records(root)]
        (root / "llava_next_raw_format").mkdir()
        (root / "llava_next_raw_format" / "llava_next_raw_format_processed.json").write_text(json.dumps(records), encoding="utf-8")
        shim = work / "bin" / "deepspeed"
        shim.parent.mkdir()
        launch = REPO / "recipes" / "llava-next" / "llava" / "cpu_launch.py"
        shim.write_text(f'#!/usr/bin/env bash\nexec {shlex.quote(llava_python)} {shlex.quote(str(launch))} "$@"\n', encoding="utf-8")
        shim.chmod(0o755)
    else:
        from gswa_plugin.testing.tiny_internvl2 import write_released

        write_released(work / "models" / "InternVL2-2B")
        llava = work / "data" / "llava"
        (llava / "llava_v1_5_mix665k.json").write_text(json.dumps(_tiny_records(llava)), encoding="utf-8")
    # lmms-eval finds a local copy of each task's hub dataset under the working directory
    code = "import sys; from tests.lmms_eval_data import write_task_data; write_task_data(sys.argv[1])"
    subprocess.run([eval_python, "-c", code, str(work)], check=True, cwd=REPO, env=_env())
    (work / "recipes").symlink_to(REPO / "recipes")  # the README's relative recipe paths, from the work folder


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               OMP_NUM_THREADS="1", WANDB_MODE="disabled", GSWA_PLUGINS="")  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("framework", choices=sorted(READMES))
    parser.add_argument("--work", type=Path, required=True, help="an empty folder for models, data, runs, results")
    parser.add_argument("--eval-python", default=".venv-lmms-eval/bin/python", help="python of the lmms-eval environment")
    parser.add_argument("--engine-python", default=".venv-lmms-engine/bin/python", help="python of the lmms-engine environment")
    parser.add_argument("--llava-python", default=".venv-llava/bin/python", help="python of the llava environment")
    args = parser.parse_args(argv)
    py = {name: str(Path(getattr(args, f"{name}_python")).absolute()) for name in ("eval", "engine", "llava")}
    for name in ("eval",) + {"lmms-engine": ("engine",), "llava": ("llava",)}.get(args.framework, ()):
        if not Path(py[name]).is_file():
            raise SystemExit(f"--{name}-python {py[name]} does not exist (the CI steps create these environments)")
    work = args.work.absolute()
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"--work {work} is not empty")
    work.mkdir(parents=True, exist_ok=True)
    write_inputs(work, py["eval"], args.framework, py["llava"])
    lines = ["set -euo pipefail", f"cd {shlex.quote(str(work))}"]
    # `python`, `gswa`, `accelerate` are this environment's (the transformers one)
    lines.append(f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH")
    for cmd in readme_commands(READMES[args.framework]):
        run, changed = tiny_command(cmd, work, py)
        lines.append(f"echo {shlex.quote('>>> README: ' + cmd)}")
        if changed:
            lines.append(f"echo {shlex.quote('    tiny run: ' + changed)}")
        if run is not None:
            lines.append(run)
    lines.append('printf "%s\\n%s\\n" "$M" "$R" > e2e-models.txt')  # the README's baseline and trained model
    script = work / "e2e.sh"
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"running {script} (the {args.framework} README's sequence on a tiny checkpoint)", flush=True)
    rc = subprocess.run(["bash", str(script)], env=_env()).returncode
    if rc == 0:
        base, trained = (work / p for p in (work / "e2e-models.txt").read_text(encoding="utf-8").split("\n")[:2])
        print(check_trained(base, trained))
    return rc


def check_trained(base: Path, trained: Path) -> str:
    """The evaluated run is a trained one: its host weights moved away from the converted baseline's
    and its GSWA was saved beside them. Raises SystemExit otherwise."""
    import torch
    from safetensors.torch import load_file

    before, after = load_file(str(base / "model.safetensors")), load_file(str(trained / "model.safetensors"))
    common = sorted(set(before) & set(after))
    if not common:
        raise SystemExit(f"{trained} and {base} share no tensor names; is {trained} the trained host?")
    # compared in the trained file's dtype (lmms-engine writes bf16 when its output_dtype says so)
    moved = [k for k in common if not torch.equal(before[k].to(after[k].dtype), after[k])]
    if not moved or not (trained / "gswa" / "gswa.safetensors").is_file():
        raise SystemExit(f"{trained}: {len(moved)} host tensors moved, GSWA saved: "
                         f"{(trained / 'gswa' / 'gswa.safetensors').is_file()}; training did not reach the evaluated model")  # fmt: skip
    frozen = [k for k in common if "vision_tower" in k]
    still = sum(k not in moved for k in frozen)
    return (f"trained model {trained}: {len(moved)} of {len(common)} host tensors moved from the baseline "
            f"({still} of {len(frozen)} vision-tower tensors unchanged, as the recipe freezes it); GSWA saved")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
