"""Build a tiny lmms-engine training run on disk: model, processor, data, YAML.

Everything is real: transformers' native ``InternVLForConditionalGeneration`` (tiny, random) and
``InternVLProcessor`` saved as a checkpoint folder, scikit-image photographs as the images, and a
dataset in lmms-engine's OpenAI-style messages format read through its ``yaml`` dataset format.
The YAML is the recipe's (recipes/internvl2-2b/lmms-engine/sleighvl.yaml) with paths and sizes
shrunk; GSWA is turned on exactly as a user would, in ``model_config.monkey_patch_kwargs``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from gswa_plugin.hf import save_processor
from gswa_plugin.testing.tiny import sample_image, tiny_internvl, tiny_internvl_processor, tiny_tokenizer

#: Tile side of the tiny model (patch 14 -> 4x4 patches -> 4 tokens per tile after pixel shuffle).
TILE = 56
#: A chat template in the shape of InternVL2's, over the tiny tokenizer's words.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }} : "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<IMG_CONTEXT> "
    "{% else %}{{ item['text'] }} {% endif %}{% endfor %}{% endfor %}"
)
PHOTOS = {"astronaut.png": ("astronaut", None), "coffee.png": ("coffee", (300, 100)), "chelsea.png": ("chelsea", (120, 200))}
SAMPLES = [
    ("astronaut.png", "describe the image", "a person in a red and blue photo"),
    ("coffee.png", "what is in the picture ?", "a coffee cup"),
    ("chelsea.png", "what is in the image ?", "a cat"),
    ("coffee.png", "describe the picture", "a red cup of coffee"),
]


def write_model(root: Path, family: str = "internvl") -> Path:
    """Tiny checkpoint + processor (with chat template) in one folder."""
    if family == "llava_onevision":
        return _write_llava_onevision(root)
    path = root / "tiny-internvl"
    model = tiny_internvl(image_size=TILE)
    model.config._attn_implementation = "sdpa"
    model.save_pretrained(path)
    proc = _processor()
    proc.chat_template = CHAT_TEMPLATE
    save_processor(proc, path)
    return path


def _write_llava_onevision(root: Path) -> Path:
    """Tiny LLaVA-OneVision (SigLIP, anyres_max_9) + the real processor lmms-engine's `llava`
    data processor loads (``LlavaOnevisionProcessor.from_pretrained``)."""
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    from gswa_plugin.testing.tiny_hosts import anyres_pinpoints, tiny_llava_onevision

    path = root / "tiny-llava-onevision"
    model = tiny_llava_onevision(tile=TILE)
    model.config._attn_implementation = "sdpa"
    model.save_pretrained(path)
    proc = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(
            size={"height": TILE, "width": TILE}, image_grid_pinpoints=anyres_pinpoints(TILE, 4)
        ),
        tokenizer=tiny_tokenizer(),
        video_processor=LlavaOnevisionVideoProcessor(),
        num_image_tokens=(TILE // 14) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=CHAT_TEMPLATE.replace("<IMG_CONTEXT>", "<image>"),
    )
    proc.save_pretrained(path)
    return path


def _processor():
    """The tiny InternVL processor; with torchvision installed (as lmms-engine requires) the real
    ``InternVLProcessor`` insists on a video processor, so one is given."""
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available():
        return tiny_internvl_processor(image_size=TILE, max_patches=6)
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    image_processor = GotOcr2ImageProcessor(
        size={"height": TILE, "width": TILE},
        crop_to_patches=True,
        min_patches=1,
        max_patches=6,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    return InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(),
        video_processor=InternVLVideoProcessor(),
        image_seq_length=(TILE // 14) ** 2 // 4,
    )


def write_data(root: Path) -> Path:
    """Images and a JSON file of OpenAI-style chat samples; returns the dataset YAML."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name, (photo, size) in PHOTOS.items():
        img = sample_image(photo)
        (img.resize(size) if size else img).save(images / name)
    records = [
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": image}},
                        {"type": "text", "text": question},
                    ],
                },
                {"role": "assistant", "content": [{"type": "text", "text": answer}]},
            ]
        }
        for image, question, answer in SAMPLES
    ]
    data = root / "train.json"
    data.write_text(json.dumps(records, indent=1), encoding="utf-8")
    spec = root / "dataset.yaml"
    spec.write_text(
        yaml.safe_dump({"datasets": [{"path": str(data), "data_folder": str(images), "data_type": "json"}]}),
        encoding="utf-8",
    )
    return spec


def write_config(
    root: Path,
    trainer_type: str = "hf_trainer",
    steps: int = 3,
    gswa: dict[str, Any] | None = None,
    family: str = "internvl",
) -> Path:
    """The lmms-engine YAML of a tiny run with GSWA on; returns its path. ``family``: ``internvl``
    (gswa-plugin's ``internvl`` data processor) or ``llava_onevision`` (lmms-engine's own ``llava``)."""
    model = write_model(root, family)
    dataset = write_data(root)
    gswa_block = {"variant": "self_attn", "hidden_size": 32, "num_heads": 4, "num_layers": 1, **(gswa or {})}
    layers = ["Qwen2DecoderLayer"]
    config: dict[str, Any] = {
        "trainer_type": trainer_type,
        "dataset_config": {
            "dataset_type": "vision",
            "dataset_format": "yaml",
            "dataset_path": str(dataset),
            "processor_config": {
                "processor_name": str(model),
                "processor_type": "internvl" if family == "internvl" else "llava",
            },
            "shuffle": False,
            "packing": False,
        },
        "model_config": {
            "load_from_pretrained_path": str(model),
            "attn_implementation": "sdpa",
            "monkey_patch_kwargs": {"patch_type": ["gswa"], "gswa": gswa_block},
        },
        "trainer_args": {
            "per_device_train_batch_size": 2,
            "learning_rate": 1.0e-2,
            "weight_decay": 0.0,
            "max_steps": steps,
            "num_train_epochs": 1,
            "logging_steps": 1,
            "save_steps": 2,
            "save_strategy": "steps",
            "output_dir": str(root / "out"),
            "report_to": "none",
            "bf16": False,
            "use_cpu": True,
            "dataloader_num_workers": 0,
            "dataloader_pin_memory": False,
            "gradient_checkpointing": False,
            "use_liger_kernel": False,
            "use_rmpad": False,
            "seed": 0,
            "lr_scheduler_type": "constant",
            "warmup_steps": 0,
            "warmup_ratio": 0.0,
            "run_name": "gswa-tiny",
        },
    }
    if trainer_type == "fsdp2_trainer":
        config["trainer_args"].update(
            {
                "bf16": True,
                "fsdp2": True,
                "reduce_dtype": "float32",
                "output_dtype": "float32",
                "fsdp_config": {"transformer_layer_cls_to_wrap": layers, "reshard_after_forward": True},
            }
        )
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path
