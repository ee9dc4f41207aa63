"""``gswa demo``: GSWA on one real photograph, end to end, with no network.

By default: a small InternVL-architecture model built in code (random weights), the real
``InternVLProcessor`` tiling a scikit-image photograph into 448 px tiles plus a thumbnail, GSWA
enabled from the packaged default YAML, one ``generate()``, the per-tile weights as a table, and
a picture of the weights over the image. With ``model`` (a local checkpoint directory or a hub
id in the cache) the same runs on a real model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from gswa_plugin import api
from gswa_plugin.config import default_config_path
from gswa_plugin.tools.visualize import RANDOM_WEIGHTS_NOTE, grid_for, load_image, weight_map

DEFAULT_PROMPT = "describe the image"


@dataclass
class DemoResult:
    """What the demo produced."""

    tile_weights: list[float]
    thumbnail_weight: float | None
    grid: tuple[int, int]
    generated_text: str
    picture: Path
    adapter: str
    variant: str


def load_model(model: str | os.PathLike[str]) -> tuple[Any, Any]:
    """A real checkpoint (local directory or cached hub id) and its processor."""
    from transformers import AutoModelForImageTextToText

    from gswa_plugin.hf import load_processor
    from gswa_plugin.tools.hosts import check_model_source

    check_model_source(model)
    try:
        processor = load_processor(model)
        net = AutoModelForImageTextToText.from_pretrained(model).eval()
    except OSError as exc:
        raise FileNotFoundError(
            f"could not load '{model}': {exc}. Give a local checkpoint directory (with config.json, weights and "
            "processor files), or a hub id already in the cache when offline"
        ) from exc
    return net, processor


def build_prompt(processor: Any, prompt: str) -> str:
    token = getattr(processor, "image_token", "<image>")
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    return f"{token} {prompt}"


def run_demo(
    model: str | os.PathLike[str] | None = None,
    image: str | os.PathLike[str] | Image.Image | None = None,
    config: str | os.PathLike[str] | dict[str, Any] | None = None,
    out: str | os.PathLike[str] = "gswa_demo_out",
    prompt: str = DEFAULT_PROMPT,
    max_new_tokens: int = 8,
) -> DemoResult:
    """Enable GSWA, generate once on one image, and write the weight picture. See the module docstring."""
    from gswa_plugin.tools.hosts import is_tiny, tiny_host

    if is_tiny(model):
        net, processor = tiny_host(None if model is None else str(model))
        note = RANDOM_WEIGHTS_NOTE.format(name=model or "tiny")
    else:
        net, processor = load_model(model)
        note = f"model: {model}"
    img, img_name = load_image(image)
    handle = api.enable(net, config if config is not None else default_config_path())
    inputs = processor(text=[build_prompt(processor, prompt)], images=[img], return_tensors="pt")
    with torch.no_grad():
        ids = net.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = ids[0, inputs["input_ids"].shape[1] :]
    text = processor.tokenizer.decode(new, skip_special_tokens=True)
    batch = handle.last_batch
    tile_w = api.last_weights(net)[0].float().tolist()
    glob_idx = batch.layout.global_indices()[0]
    thumb = float(batch.weights[glob_idx]) if glob_idx is not None else None
    grid = grid_for(processor, img, len(tile_w))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    picture = out_dir / "gswa_weights.png"
    title = f"GSWA ({handle.config.variant}, adapter {handle.adapter.name}) on {img_name}"
    weight_map(img, tile_w, grid, thumbnail_weight=thumb, title=title, note=note).save(picture)
    return DemoResult(tile_w, thumb, grid, text, picture, handle.adapter.name, handle.config.variant)
