"""Loading a host model with GSWA for evaluation and inspection, and the tile cap.

Shared by the lmms-eval models (:mod:`gswa_plugin.integrations.lmms_eval`), ``gswa visualize`` and the
inspection tools: a model is a local checkpoint directory (or a hub id already in the cache) or,
by default, the tiny InternVL built in code (:mod:`gswa_plugin.testing.tiny`); GSWA comes from a saved
directory (:func:`gswa_plugin.load`), a YAML file with a ``gswa:`` block
(:func:`gswa_plugin.enable`) or, with ``"none"``, stays off (the baseline).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from gswa_plugin import api
from gswa_plugin import checkpoint as ckpt
from gswa_plugin.config import default_config_path
from gswa_plugin.errors import CheckpointError, ConfigError
from gswa_plugin.handle import GSWAHandle

#: Values of ``gswa`` meaning "evaluate the host without GSWA" (the baseline).
DISABLED = ("none", "off", "false", "baseline", "disabled", "")


def gswa_source_kind(gswa: str | os.PathLike[str] | None) -> str:
    """``"disabled"``, ``"default"`` (the packaged default YAML), ``"checkpoint"`` (a saved
    directory) or ``"yaml"`` (a config file) for what a user passed as ``gswa``.

    Raises:
        CheckpointError: the path does not exist.
    """
    if gswa is None:
        return "default"
    text = str(gswa).strip()
    if text.lower() in DISABLED:
        return "disabled"
    if text.lower() == "default":
        return "default"
    path = Path(text)
    if path.is_dir():
        return "checkpoint"
    if path.is_file():
        return "yaml"
    raise CheckpointError(
        f"gswa={text!r} is neither a saved GSWA directory (with {ckpt.CONFIG_FILE} and {ckpt.WEIGHTS_FILE}), "
        "a YAML file with a top-level `gswa:` block, nor 'none' (GSWA off) / 'default' (the packaged default)"
    )


def enable_gswa(model: torch.nn.Module, gswa: str | os.PathLike[str] | None) -> GSWAHandle | None:
    """Enable GSWA on ``model`` from ``gswa`` (see :func:`gswa_source_kind`); ``None`` when disabled."""
    kind = gswa_source_kind(gswa)
    if kind == "disabled":
        return None
    if kind == "checkpoint":
        return ckpt.load(model, str(gswa))
    if kind == "yaml":
        return api.enable(model, str(gswa))
    return api.enable(model, default_config_path())


def load_pretrained(
    pretrained: str | os.PathLike[str], dtype: str | torch.dtype = "float32", device: str = "cpu"
) -> tuple[Any, Any]:
    """A local checkpoint directory (or a cached hub id) and its processor, in eval mode."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch_dtype = dtype if isinstance(dtype, torch.dtype) else (dtype if dtype == "auto" else getattr(torch, str(dtype)))
    try:
        processor = AutoProcessor.from_pretrained(str(pretrained))
        model = AutoModelForImageTextToText.from_pretrained(str(pretrained), dtype=torch_dtype)
    except OSError as exc:
        raise FileNotFoundError(
            f"could not load '{pretrained}': {exc}. Give a local checkpoint directory (with config.json, weights "
            "and processor files), or a hub id already in the cache when offline"
        ) from exc
    except ImportError as exc:
        first = " ".join(str(exc).split()).split(". ")[0].rstrip(".") or type(exc).__name__
        raise ImportError(
            f"could not load '{pretrained}': {first}. Install the missing package in this environment (for "
            "processors with a video processor: torchvision, matching your torch version)"
        ) from exc
    return model.to(device).eval(), processor


def tiny_default(max_tiles: int | None = None) -> tuple[Any, Any]:
    """The small InternVL built in code (random weights, 448 px tiles) and its real processor."""
    from gswa_plugin.testing.tiny import tiny_internvl, tiny_internvl_processor

    return tiny_internvl(image_size=448), tiny_internvl_processor(image_size=448, max_patches=max_tiles or 12)


def set_tile_cap(model: Any, processor: Any, max_tiles: int | None) -> None:
    """Cap the number of tiles per image (thumbnail not counted); ``None`` keeps the host's.

    InternVL-style processors (``crop_to_patches``) take ``max_patches``; anyres processors
    (LLaVA-NeXT, LLaVA-OneVision) keep only the grids of ``image_grid_pinpoints`` with at most
    ``max_tiles`` tiles, in the processor and in the model config (which must agree).

    Raises:
        ConfigError: ``max_tiles`` is below 1 or the processor has no tile setting.
    """
    if max_tiles is None:
        return
    max_tiles = int(max_tiles)
    if max_tiles < 1:
        raise ConfigError([f"max_tiles must be >= 1, got {max_tiles}"])
    ip = getattr(processor, "image_processor", processor)
    if hasattr(ip, "max_patches") and getattr(ip, "crop_to_patches", True):
        ip.max_patches = max_tiles
        ip.min_patches = min(getattr(ip, "min_patches", 1) or 1, max_tiles)
        return
    pinpoints = getattr(ip, "image_grid_pinpoints", None)
    if pinpoints:
        patch = _tile_size(ip)
        kept = [p for p in pinpoints if (p[0] // patch) * (p[1] // patch) <= max_tiles]
        if not kept:
            raise ConfigError([f"max_tiles={max_tiles} leaves none of the processor's grids {pinpoints}"])
        ip.image_grid_pinpoints = kept
        cfg = getattr(model, "config", None)
        if cfg is not None and getattr(cfg, "image_grid_pinpoints", None) is not None:
            cfg.image_grid_pinpoints = kept
        return
    raise ConfigError(
        [f"{type(ip).__name__} has no tile setting (`max_patches` or `image_grid_pinpoints`); leave max_tiles unset"]
    )


def _tile_size(ip: Any) -> int:
    size = getattr(ip, "crop_size", None) or getattr(ip, "size", None)
    if isinstance(size, dict):
        return int(size.get("height") or size.get("shortest_edge"))
    for attr in ("height", "shortest_edge"):
        if getattr(size, attr, None):
            return int(getattr(size, attr))
    return int(size)


def load_host(
    model: str | os.PathLike[str] | None = None,
    gswa: str | os.PathLike[str] | None = None,
    max_tiles: int | None = None,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
) -> tuple[Any, Any, GSWAHandle | None]:
    """Model, processor and GSWA handle (``None`` when GSWA is off) ready for inference.

    Args:
        model: local checkpoint directory or cached hub id; ``None`` for the tiny built-in InternVL.
        gswa: saved GSWA directory, YAML with a ``gswa:`` block, ``"none"`` for no GSWA, or
            ``None`` for the packaged default (training-free ``cosine``).
        max_tiles: tile cap per image (see :func:`set_tile_cap`).
        dtype: dtype of a loaded checkpoint.
        device: device of a loaded checkpoint.
    """
    gswa_source_kind(gswa)  # fail on a bad path before a large model is loaded
    if model is None:
        net, processor = tiny_default(max_tiles)
    else:
        net, processor = load_pretrained(model, dtype=dtype, device=device)
        set_tile_cap(net, processor, max_tiles)
    handle = enable_gswa(net, gswa)
    return net, processor, handle


def prompt_text(processor: Any, question: str, n_images: int = 1) -> str:
    """The prompt for ``question`` about ``n_images`` images: the processor's chat template where it
    has one, else its image token(s) followed by the question."""
    if getattr(processor, "chat_template", None):
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
        return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    token = getattr(processor, "image_token", "<image>")
    return " ".join([token] * n_images + [question])


def model_inputs(model: Any, processor: Any, images: Sequence[Image.Image], question: str) -> dict[str, Any]:
    """Processor outputs for one prompt about ``images``, on the model's device and float dtype."""
    inputs = processor(text=[prompt_text(processor, question, len(images))], images=list(images), return_tensors="pt")
    return on_model(model, inputs)


def on_model(model: Any, inputs: Any) -> dict[str, Any]:
    """Processor outputs moved to the model's device, floating tensors in its dtype."""
    ref = next(p for p in model.parameters() if p.is_floating_point())
    return {
        k: (v.to(ref.device, ref.dtype) if v.is_floating_point() else v.to(ref.device)) if torch.is_tensor(v) else v
        for k, v in dict(inputs).items()
    }
