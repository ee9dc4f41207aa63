"""A tiny, offline training setup: a native InternVL checkpoint, real photographs, a recipe.

Used by the tests, the CI step and the docs to run a recipe end to end on CPU in seconds::

    python -m gswa_plugin.integrations.transformers.smoke /tmp/gswa-smoke      # writes model/, data/, recipe.yaml
    accelerate launch --cpu --num_processes 2 -m gswa_plugin.cli train /tmp/gswa-smoke/recipe.yaml

The model is [`gswa_plugin.testing.tiny.tiny_internvl`][gswa_plugin.testing.tiny.tiny_internvl] (real
``InternVLForConditionalGeneration``,
random weights, 56 px tiles) saved with its real processor; the data are scikit-image's
photographs in different aspect ratios, so images get different tile counts, with short
answers from the tiny vocabulary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

#: Tile size of the tiny model (patch 14 -> 16 patches -> 4 tokens per tile).
TILE = 56
#: (photograph, resize to (w, h) or None, question, answer): different aspect ratios on purpose, and
#: answers of equal length, so a batch's mean loss does not depend on how it is split over ranks.
SAMPLES: list[tuple[str, tuple[int, int] | None, str, str]] = [
    ("coffee", (300, 100), "what is in the image ?", "a coffee cup"),
    ("astronaut", None, "describe the photo", "a photo person"),
    ("chelsea", (200, 120), "what is in the picture ?", "a red cat"),
    ("camera", (120, 240), "what colour is the photo ?", "a green photo"),
]

#: The GSWA block of the smoke recipe: small enough for the tiny vision width (32).
SMOKE_GSWA = {"variant": "self_attn", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "mlp_ratio": 2.0}


def write_model(directory: str | Path, seed: int = 0) -> Path:
    """Save the tiny InternVL model and its processor to ``directory`` (``from_pretrained`` layout)."""
    from gswa_plugin.hf import save_processor
    from gswa_plugin.testing.tiny import tiny_internvl, tiny_internvl_processor

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model = tiny_internvl(seed=seed, image_size=TILE)
    model.save_pretrained(out)
    save_processor(tiny_internvl_processor(image_size=TILE, max_patches=6), out)
    return out


def write_data(directory: str | Path, formats: tuple[str, ...] = ("llava", "messages")) -> list[Path]:
    """Real photographs as JPEG files and JSONL conversations about them (one file per format)."""
    from gswa_plugin.testing.tiny import sample_image

    out = Path(directory)
    (out / "images").mkdir(parents=True, exist_ok=True)
    files = []
    for fmt in formats:
        lines = []
        for i, (name, size, question, answer) in enumerate(SAMPLES):
            img = sample_image(name)
            if size is not None:
                img = img.resize(size)
            rel = f"images/{name}.jpg"
            img.save(out / rel)
            if fmt == "llava":
                rec: dict[str, Any] = {
                    "id": f"{name}-{i}",
                    "image": rel,
                    "conversations": [
                        {"from": "human", "value": f"<image>\n{question}"},
                        {"from": "gpt", "value": answer},
                    ],
                }
            else:
                rec = {
                    "id": f"{name}-{i}",
                    "messages": [
                        {"role": "user", "content": [{"type": "image", "image": rel}, {"type": "text", "text": question}]},
                        {"role": "assistant", "content": answer},
                    ],
                }
            lines.append(json.dumps(rec))
        path = out / f"train_{fmt}.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        files.append(path)
    return files


def smoke_recipe(model_dir: str | Path, data_files: list[Path], output_dir: str | Path, **overrides: Any) -> dict[str, Any]:
    """A recipe dict for the tiny setup (CPU, fp32, a few steps)."""
    recipe: dict[str, Any] = {
        "host": "transformers",
        "model": {"name_or_path": str(model_dir), "dtype": "float32", "attn_implementation": "eager", "max_patches": 6},
        "data": {"train_files": [str(f) for f in data_files], "template": "plain", "max_length": 512},
        "freeze": "gswa",
        "gswa_learning_rate": 0.003,
        "diagnostics": {"uniform_after_steps": 2, "warn_every_steps": 1},
        "training_args": {
            "output_dir": str(output_dir),
            "max_steps": 6,
            "per_device_train_batch_size": 2,
            "learning_rate": 1.0e-3,
            "lr_scheduler_type": "constant",
            "logging_steps": 1,
            "save_steps": 3,
            "save_strategy": "steps",
            "report_to": "none",
            "use_cpu": True,
            "seed": 0,
            "data_seed": 0,
            "dataloader_num_workers": 0,
            "disable_tqdm": True,
        },
        "gswa": dict(SMOKE_GSWA),
    }
    for key, value in overrides.items():
        recipe[key] = value
    return recipe


def write_setup(root: str | Path, **overrides: Any) -> Path:
    """Model, data and ``recipe.yaml`` under ``root``; returns the recipe path."""
    root = Path(root)
    model_dir = write_model(root / "model")
    files = write_data(root / "data", formats=("llava",))
    recipe = smoke_recipe(model_dir, files, root / "out", **overrides)
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(write_setup(sys.argv[1] if len(sys.argv) > 1 else "gswa-smoke"))
