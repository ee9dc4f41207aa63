"""A tiny llava training run on disk, for llava's own ``train()`` through gswa-plugin's launcher.

The checkpoint is a tiny ``LlavaLlamaForCausalLM`` (llava's class, saved with ``save_pretrained``)
with its tokenizer; the vision tower is a tiny CLIP folder; the data is llava's JSON format
(``image`` + ``conversations``) over scikit-image photographs.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from gswa_plugin.testing.tiny import sample_image, tiny_tokenizer
from tests.host_cases.llava_torch import tiny_llava, tower_dir

PHOTOS = {"astronaut.png": ("astronaut", None), "coffee.png": ("coffee", (300, 100))}
SAMPLES = [("astronaut.png", "a person in a red photo"), ("coffee.png", "a coffee cup"), ("coffee.png", "a red cup")]
GSWA = {"variant": "self_attn", "hidden_size": 32, "num_heads": 4, "num_layers": 1}


def write_run(root: Path) -> list[str]:
    """Write checkpoint, images, data and GSWA config; returns the launcher's arguments."""
    ckpt = root / "tiny-llava"
    tiny_llava().save_pretrained(ckpt)
    tiny_tokenizer().save_pretrained(ckpt)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name, (photo, size) in PHOTOS.items():
        img = sample_image(photo)
        (img.resize(size) if size else img).save(images / name)
    records = [
        {
            "id": str(i),
            "image": image,
            "conversations": [{"from": "human", "value": "<image>\ndescribe the image"}, {"from": "gpt", "value": text}],
        }
        for i, (image, text) in enumerate(SAMPLES)
    ]
    data = root / "data.json"
    data.write_text(json.dumps(records), encoding="utf-8")
    gswa = root / "gswa.yaml"
    gswa.write_text(yaml.safe_dump({"gswa": GSWA}), encoding="utf-8")
    return [
        "--gswa_config", str(gswa),
        "--model_name_or_path", str(ckpt),
        "--version", "plain",
        "--vision_tower", tower_dir(),
        "--mm_projector_type", "mlp2x_gelu",
        "--mm_vision_select_layer", "-2",
        "--mm_use_im_start_end", "False",
        "--mm_use_im_patch_token", "False",
        "--image_aspect_ratio", "pad",
        "--data_path", str(data),
        "--image_folder", str(images),
        "--output_dir", str(root / "out"),
        "--max_steps", "2",
        "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-2",
        "--save_strategy", "no",
        "--report_to", "none",
        "--use_cpu", "True",
        "--bf16", "False",
        "--model_max_length", "256",
        "--dataloader_num_workers", "0",
        "--logging_steps", "1",
    ]
