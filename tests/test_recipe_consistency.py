"""Every SleighVL recipe agrees with the one canonical setting (recipes/internvl2-2b/canonical.yaml).

Each recipe is read through its host's own view of the file (the transformers recipe through
``TrainConfig``, the lmms-engine config through its trainer and processor keys) into the same
settings (GSWA block, learning rate and weight decay per group, global batch, schedule, tiles,
sequence length, chat format, system prompt, label masking, what trains, seed) and compared with
the canonical values. A recipe may differ only where ``canonical.yaml`` lists the setting for it
with a reason; a listed setting that in fact agrees is a stale entry and fails too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gswa_plugin.config import GSWAConfig
from gswa_plugin.integrations.transformers.config import FREEZE_POLICIES, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SLEIGHVL = ROOT / "recipes" / "internvl2-2b"
CANONICAL = yaml.safe_load((SLEIGHVL / "canonical.yaml").read_text(encoding="utf-8"))

#: Where each trainable part lives in transformers' native InternVL (``freeze_modules`` prefixes).
NATIVE_PARTS = {
    "vision": ("model.vision_tower",),
    "projector": ("model.multi_modal_projector",),
    "language_model": ("model.language_model", "lm_head"),
    "gswa": ("gswa",),
}
#: What the chat formats of the two hosts produce (each pinned by its own test: tests/test_data.py's
#: internlm2-chat tests and tests/test_lmms_engine_config.py's processor test).
TRANSFORMERS_TEMPLATES = {"internlm2": ("internlm2", "answer+im_end")}
LMMS_ENGINE_PROCESSORS = {"internvl": ("internlm2", "answer+im_end")}


def _gswa(block: dict[str, Any] | None) -> dict[str, Any]:
    return GSWAConfig.from_dict(block or {}).to_dict()


def _warmup_ratio(args: dict[str, Any]) -> float | None:
    if "warmup_ratio" in args:
        return float(args["warmup_ratio"])
    steps = args.get("warmup_steps")
    return float(steps) if isinstance(steps, float) and steps < 1 else None


def transformers_settings(data: dict[str, Any], gpus: int) -> dict[str, Any]:
    """The shared settings as ``gswa train`` reads them from a transformers recipe."""
    cfg = TrainConfig.from_dict(data)
    args = cfg.training_args
    template, masking = TRANSFORMERS_TEMPLATES.get(cfg.data.template, (cfg.data.template, "unknown"))
    host_lr = float(args["learning_rate"])
    return {
        "host_learning_rate": host_lr,
        "gswa_learning_rate": float(cfg.gswa_learning_rate if cfg.gswa_learning_rate is not None else host_lr),
        "host_weight_decay": float(args.get("weight_decay", 0.0)),
        "gswa_weight_decay": float(cfg.gswa_weight_decay),
        "global_batch": int(args["per_device_train_batch_size"]) * int(args.get("gradient_accumulation_steps", 1)) * gpus,
        "epochs": args.get("num_train_epochs"),
        "scheduler": args.get("lr_scheduler_type"),
        "warmup_ratio": _warmup_ratio(args),
        "max_grad_norm": float(args.get("max_grad_norm", 1.0)),
        "max_tiles": cfg.model.max_patches,
        "max_length": cfg.data.max_length,
        "template": template,
        "system_prompt": cfg.data.system_prompt,
        "masking": masking,
        "trains": sorted(FREEZE_POLICIES[cfg.freeze]),
        "seed": int(args.get("seed", 42)),
        "gswa": cfg.gswa.to_dict() if cfg.gswa is not None else _gswa(None),
    }


def _converted_tiles(text: str) -> int | None:
    """Tiles of the checkpoint an lmms-engine recipe trains: its header's conversion command."""
    m = re.search(r"gswa convert-internvl2 .*--max-patches[ =](\d+)", text)
    return int(m.group(1)) if m else None


def lmms_engine_settings(data: dict[str, Any], gpus: int, text: str) -> dict[str, Any]:
    """The shared settings as lmms-engine reads them (one optimizer group, processor-defined format)."""
    args = data["trainer_args"]
    frozen = [str(m) for m in args.get("freeze_modules") or []]
    trains = sorted(
        part
        for part, paths in NATIVE_PARTS.items()
        if not any(p == f or p.startswith(f + ".") for p in paths for f in frozen)
    )
    processor = data["dataset_config"]["processor_config"]
    template, masking = LMMS_ENGINE_PROCESSORS.get(processor["processor_type"], ("unknown", "unknown"))
    lr, wd = float(args["learning_rate"]), float(args.get("weight_decay", 0.0))
    return {
        "host_learning_rate": lr,
        "gswa_learning_rate": lr,
        "host_weight_decay": wd,
        "gswa_weight_decay": wd,
        "global_batch": int(args["per_device_train_batch_size"]) * int(args.get("gradient_accumulation_steps", 1)) * gpus,
        "epochs": args.get("num_train_epochs"),
        "scheduler": args.get("lr_scheduler_type"),
        "warmup_ratio": _warmup_ratio(args),
        "max_grad_norm": float(args.get("max_grad_norm", 1.0)),
        "max_tiles": _converted_tiles(text),
        "max_length": data["dataset_config"].get("max_length"),
        "template": template,
        # the converted checkpoint's chat template puts InternVL2's system prompt first
        "system_prompt": CANONICAL["settings"]["system_prompt"] if template == "internlm2" else None,
        "masking": masking,
        "trains": trains,
        "seed": int(args.get("seed", 42)),
        "gswa": _gswa(data["model_config"]["monkey_patch_kwargs"].get("gswa")),
    }


def recipe_settings(rel: str) -> dict[str, Any]:
    path = SLEIGHVL / rel
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    gpus = int(CANONICAL["recipes"][rel]["gpus"])
    if data.get("host") == "transformers":
        return transformers_settings(data, gpus)
    if "trainer_args" in data and "model_config" in data:
        return lmms_engine_settings(data, gpus, text)
    raise AssertionError(f"{rel}: neither a transformers recipe nor an lmms-engine config")


def canonical_settings() -> dict[str, Any]:
    settings = dict(CANONICAL["settings"])
    settings["gswa"] = _gswa(settings["gswa"])
    settings["trains"] = sorted(settings["trains"])
    return settings


def disagreements(rel: str) -> dict[str, tuple[Any, Any]]:
    """Setting -> (recipe's value, canonical value) for every setting the recipe does not share."""
    ours, canon = recipe_settings(rel), canonical_settings()
    assert set(ours) == set(canon), f"settings compared differ: {sorted(set(ours) ^ set(canon))}"
    return {key: (ours[key], canon[key]) for key in canon if ours[key] != canon[key]}


def test_every_sleighvl_recipe_is_listed():
    """A new SleighVL recipe (a YAML with a GSWA block under recipes/internvl2-2b/) must join the check."""
    found = set()
    for path in SLEIGHVL.rglob("*.yaml"):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        is_recipe = isinstance(data, dict) and (data.get("host") == "transformers" or "trainer_args" in data)
        if is_recipe:
            block = data.get("gswa") or ((data.get("model_config") or {}).get("monkey_patch_kwargs") or {}).get("gswa")
            if block is not None:
                found.add(path.relative_to(SLEIGHVL).as_posix())
    assert found == set(CANONICAL["recipes"]), f"canonical.yaml `recipes:` vs files: {sorted(found ^ set(CANONICAL['recipes']))}"
    assert CANONICAL["reproduction"] in CANONICAL["recipes"]
    assert CANONICAL["recipes"][CANONICAL["reproduction"]]["differs"] == {}, "the reproduction may not differ"


@pytest.mark.parametrize("rel", sorted(CANONICAL["recipes"]))
def test_recipe_agrees_with_the_canonical_setting(rel):
    allowed = CANONICAL["recipes"][rel]["differs"] or {}
    found = disagreements(rel)
    unexplained = {k: v for k, v in found.items() if k not in allowed}
    assert not unexplained, (
        f"{rel} disagrees with canonical.yaml on {', '.join(unexplained)} "
        f"(recipe, canonical): {unexplained}; change the recipe or list the setting with its reason"
    )
    stale = sorted(k for k in allowed if k not in found)
    assert not stale, f"canonical.yaml lists {stale} as differing for {rel}, but the recipe agrees: remove them"
    assert all(isinstance(why, str) and len(why) > 20 for why in allowed.values()), "every difference needs a reason"


def test_two_recipes_never_disagree_silently():
    """Pairwise: any setting on which two recipes differ is explained for at least one of them."""
    rels = sorted(CANONICAL["recipes"])
    values = {rel: recipe_settings(rel) for rel in rels}
    for i, a in enumerate(rels):
        for b in rels[i + 1 :]:
            for key in values[a]:
                if values[a][key] != values[b][key]:
                    explained = key in (CANONICAL["recipes"][a]["differs"] or {}) or key in (
                        CANONICAL["recipes"][b]["differs"] or {}
                    )
                    assert explained, f"{a} and {b} disagree on {key}: {values[a][key]!r} vs {values[b][key]!r}"


def test_the_check_catches_a_changed_setting(tmp_path, monkeypatch):
    """The comparison itself can fail: a recipe with 12 tiles and lr 1e-5 is caught on exactly those."""
    rel = CANONICAL["reproduction"]
    data = yaml.safe_load((SLEIGHVL / rel).read_text(encoding="utf-8"))
    data["model"]["max_patches"] = 12
    data["training_args"]["learning_rate"] = 1.0e-5
    data["gswa"]["num_layers"] = 1
    changed = transformers_settings(data, 8)
    canon = canonical_settings()
    assert {k for k in canon if changed[k] != canon[k]} == {"max_tiles", "host_learning_rate", "gswa"}
