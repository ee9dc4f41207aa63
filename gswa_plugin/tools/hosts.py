"""Loading a host model with GSWA for evaluation and inspection, and the tile cap.

Shared by the lmms-eval models (``gswa_plugin.integrations.lmms_eval``), ``gswa visualize`` and the
inspection tools: a model is a local checkpoint directory (or a hub id already in the cache) or,
by default, the tiny InternVL built in code ([`gswa_plugin.testing.tiny`][gswa_plugin.testing.tiny]); GSWA comes from a
saved
directory ([`gswa_plugin.load`][gswa_plugin.checkpoint.load]), a YAML file with a ``gswa:`` block
([`gswa_plugin.enable`][gswa_plugin.api.enable]) or, with ``"none"``, stays off (the baseline).
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
    """Enable GSWA on ``model`` from ``gswa`` (see [`gswa_source_kind`][gswa_plugin.tools.hosts.gswa_source_kind]);
    ``None`` when disabled."""
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
    from transformers import AutoModelForImageTextToText

    from gswa_plugin.hf import load_processor

    check_model_source(pretrained)
    torch_dtype = (
        dtype if isinstance(dtype, torch.dtype) else (dtype if dtype == "auto" else getattr(torch, str(dtype)))
    )
    try:
        processor = load_processor(str(pretrained))
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


def _tiny_llava_next(max_tiles: int | None) -> tuple[Any, Any]:
    from gswa_plugin.testing.tiny_hosts import tiny_llava_next, tiny_llava_next_processor

    n = max_tiles or 4
    return tiny_llava_next(max_tiles=n), tiny_llava_next_processor(max_tiles=n)


def _tiny_llava_onevision(max_tiles: int | None) -> tuple[Any, Any]:
    from gswa_plugin.testing.tiny_hosts import tiny_llava_onevision, tiny_llava_onevision_processor

    n = max_tiles or 4
    return tiny_llava_onevision(max_tiles=n), tiny_llava_onevision_processor(max_tiles=n)


def _tiny_idefics3(family: str) -> Any:
    def build(max_tiles: int | None) -> tuple[Any, Any]:
        from gswa_plugin.testing.tiny_more import tiny_idefics3, tiny_idefics3_processor

        return tiny_idefics3(family), tiny_idefics3_processor(family)

    return build


def _tiny_aya_vision(max_tiles: int | None) -> tuple[Any, Any]:
    from gswa_plugin.testing.tiny_more import tiny_aya_vision, tiny_aya_vision_processor

    return tiny_aya_vision(), tiny_aya_vision_processor(max_patches=max_tiles or 12)


#: ``--model`` names of the hosts built in code (random weights, real transformers classes and
#: processors, no download): every command that takes ``--model`` accepts them.
TINY_HOSTS: dict[str, tuple[str, Any]] = {
    "tiny": ("the small InternVL (the default where --model is left out)", tiny_default),
    "tiny-internvl": ("the same as `tiny`", tiny_default),
    "tiny-llava-next": ("LlavaNextForConditionalGeneration, CLIP tower, anyres", _tiny_llava_next),
    "tiny-llava-onevision": ("LlavaOnevisionForConditionalGeneration, SigLIP tower", _tiny_llava_onevision),
    "tiny-idefics3": ("Idefics3ForConditionalGeneration", _tiny_idefics3("idefics3")),
    "tiny-smolvlm": ("SmolVLMForConditionalGeneration", _tiny_idefics3("smolvlm")),
    "tiny-aya-vision": ("AyaVisionForConditionalGeneration", _tiny_aya_vision),
}


def is_tiny(model: str | os.PathLike[str] | None) -> bool:
    """Whether ``model`` names a host built in code (``None`` is the default tiny InternVL)."""
    return model is None or str(model) in TINY_HOSTS


def tiny_host(model: str | None = None, max_tiles: int | None = None) -> tuple[Any, Any]:
    """The tiny host named ``model`` (see [`TINY_HOSTS`][gswa_plugin.tools.hosts.TINY_HOSTS]) and its processor.

    Raises:
        ConfigError: ``model`` is not one of the names.
    """
    name = "tiny" if model is None else str(model)
    if name not in TINY_HOSTS:
        raise ConfigError([_unknown_tiny(name)])
    net, processor = TINY_HOSTS[name][1](max_tiles)
    if name not in ("tiny", "tiny-internvl"):
        set_tile_cap(net, processor, max_tiles)
    return net, processor


def _unknown_tiny(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(TINY_HOSTS), n=1, cutoff=0.6)
    hint = f"; did you mean `{close[0]}`?" if close else ""
    return f"--model {name!r} is not a host built in code (those are: {', '.join(TINY_HOSTS)}){hint}"


def offline() -> bool:
    """Whether the Hugging Face offline variables are set (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in _OFFLINE_VARS)


_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def check_model_source(model: str | os.PathLike[str]) -> None:
    """Fail before any download for a ``--model`` that cannot load: a missing local path, a
    misspelt tiny-host name, or (offline) a hub id that is not in the local cache.

    Raises:
        FileNotFoundError: with the fix in the message.
        ConfigError: a name that looks like a tiny host but is none.
    """
    text = str(model)
    if Path(text).exists():
        return
    if text.lower().startswith("tiny"):
        raise ConfigError([_unknown_tiny(text)])
    looks_like_path = text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text
    if looks_like_path:
        raise FileNotFoundError(
            f"--model {text!r}: no such directory. Give a checkpoint directory (config.json, weights, processor "
            f"files), a hub id, or a host built in code ({', '.join(TINY_HOSTS)})"
        )
    if offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(text, "config.json"), str):
            set_vars = ", ".join(v for v in _OFFLINE_VARS if os.environ.get(v))
            raise FileNotFoundError(
                f"--model {text!r} is a hub id that is not in the local cache, and {set_vars} is set (offline). "
                "Download it on a machine with network (`hf download ID`), pass a local directory, or use a host "
                f"built in code ({', '.join(TINY_HOSTS)})"
            )


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
        model: local checkpoint directory, cached hub id, or the name of a host built in code
            ([`TINY_HOSTS`][gswa_plugin.tools.hosts.TINY_HOSTS]); ``None`` for the tiny built-in InternVL.
        gswa: saved GSWA directory, YAML with a ``gswa:`` block, ``"none"`` for no GSWA, or
            ``None`` for the packaged default (training-free ``cosine``).
        max_tiles: tile cap per image (see [`set_tile_cap`][gswa_plugin.tools.hosts.set_tile_cap]).
        dtype: dtype of a loaded checkpoint.
        device: device of a loaded checkpoint.
    """
    gswa_source_kind(gswa)  # fail on a bad path before a large model is loaded
    if is_tiny(model):
        net, processor = tiny_host(None if model is None else str(model), max_tiles)
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
