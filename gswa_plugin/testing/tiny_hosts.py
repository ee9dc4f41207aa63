"""Tiny LLaVA-family hosts built in code, offline: real transformers classes with small configs.

The counterpart of [`gswa_plugin.testing.tiny`][gswa_plugin.testing.tiny] for the LLaVA-NeXT and LLaVA-OneVision
families:
``LlavaNextForConditionalGeneration`` (CLIP vision tower, CLS first) and
``LlavaOnevisionForConditionalGeneration`` (SigLIP vision tower, no CLS), each with its real
processor (the real anyres image processor and the tiny word-level tokenizer). Tiles are small
(56 px by default, patch 14: 16 tokens per view) so that tests stay fast on a CPU.
"""

from __future__ import annotations

from typing import Any

import torch

from gswa_plugin.hf import image_processor_class, processor_class
from gswa_plugin.testing.tiny import SPECIAL_TOKENS, WORDS, tiny_tokenizer
from gswa_plugin.testing.tiny_more import _finish, _text_config

PATCH = 14
VOCAB = len(SPECIAL_TOKENS) + len(WORDS)


def anyres_pinpoints(tile: int, max_tiles: int) -> list[list[int]]:
    """Every ``rows x cols`` grid of ``tile``-px tiles with at most ``max_tiles`` tiles, as
    ``[height, width]`` pinpoints (what ``image_grid_pinpoints`` holds)."""
    return [[r * tile, c * tile] for r in range(1, max_tiles + 1) for c in range(1, max_tiles + 1) if r * c <= max_tiles]


def _vision_config(kind: str, tile: int, vision_hidden: int, vision_layers: int) -> dict[str, Any]:
    return dict(
        model_type=kind,
        hidden_size=vision_hidden,
        intermediate_size=vision_hidden * 2,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        image_size=tile,
        patch_size=PATCH,
    )


def _build(model_class: Any, cfg: Any, seed: int) -> Any:
    """A randomly initialised model (eval, fp32, eager attention) from ``seed``."""
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return _finish(model_class(cfg))


# --- LLaVA-NeXT ---------------------------------------------------------------------------
def tiny_llava_next_config(
    tile: int = 56,
    max_tiles: int = 4,
    vision_hidden: int = 32,
    text_hidden: int = 64,
    vision_layers: int = 2,
    text_layers: int = 2,
) -> Any:
    """A small ``LlavaNextConfig``: CLIP vision tower (CLS first, feature layer -2, strategy
    ``default``), Qwen2 language model, anyres grids of up to ``max_tiles`` tiles."""
    from transformers import LlavaNextConfig

    return LlavaNextConfig(
        vision_config=_vision_config("clip_vision_model", tile, vision_hidden, vision_layers),
        text_config=_text_config("qwen2", VOCAB, text_hidden, text_layers),
        image_grid_pinpoints=anyres_pinpoints(tile, max_tiles),
        image_token_id=SPECIAL_TOKENS.index("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def tiny_llava_next(seed: int = 0, **config_kwargs: Any) -> Any:
    """A randomly initialised tiny ``LlavaNextForConditionalGeneration`` (eval, fp32, eager attention)."""
    from transformers import LlavaNextForConditionalGeneration

    return _build(LlavaNextForConditionalGeneration, tiny_llava_next_config(**config_kwargs), seed)


def tiny_llava_next_processor(tile: int = 56, max_tiles: int = 4) -> Any:
    """The real ``LlavaNextProcessor`` with the real anyres ``LlavaNextImageProcessor`` (base
    image first, then row-major tiles of ``tile`` px) and the tiny tokenizer."""
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    image_processor = image_processor_class(LlavaNextImageProcessor)(
        size={"shortest_edge": tile},
        crop_size={"height": tile, "width": tile},
        image_grid_pinpoints=anyres_pinpoints(tile, max_tiles),
    )
    return processor_class(LlavaNextProcessor)(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(),
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


# --- LLaVA-OneVision ----------------------------------------------------------------------
def tiny_llava_onevision_config(
    tile: int = 56,
    max_tiles: int = 4,
    vision_hidden: int = 32,
    text_hidden: int = 64,
    vision_layers: int = 2,
    text_layers: int = 2,
    vision_aspect_ratio: str = "anyres_max_9",
) -> Any:
    """A small ``LlavaOnevisionConfig``: SigLIP vision tower (no CLS, feature layer -1, strategy
    ``full``), Qwen2 language model, anyres grids of up to ``max_tiles`` tiles."""
    from transformers import LlavaOnevisionConfig

    return LlavaOnevisionConfig(
        vision_config=_vision_config("siglip_vision_model", tile, vision_hidden, vision_layers),
        text_config=_text_config("qwen2", VOCAB, text_hidden, text_layers),
        image_grid_pinpoints=anyres_pinpoints(tile, max_tiles),
        image_token_id=SPECIAL_TOKENS.index("<image>"),
        video_token_id=SPECIAL_TOKENS.index("<video>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=vision_aspect_ratio,
    )


def tiny_llava_onevision(seed: int = 0, **config_kwargs: Any) -> Any:
    """A randomly initialised tiny ``LlavaOnevisionForConditionalGeneration`` (eval, fp32, eager attention)."""
    from transformers import LlavaOnevisionForConditionalGeneration

    return _build(LlavaOnevisionForConditionalGeneration, tiny_llava_onevision_config(**config_kwargs), seed)


def tiny_llava_onevision_processor(
    tile: int = 56, max_tiles: int = 4, vision_aspect_ratio: str = "anyres_max_9"
) -> Any:
    """The real ``LlavaOnevisionProcessor`` with the real ``LlavaOnevisionImageProcessor`` (base
    image first, then row-major tiles; a multi-image sample gets only the base view) and the tiny
    tokenizer. ``vision_aspect_ratio`` must match the model's."""
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor

    image_processor = image_processor_class(LlavaOnevisionImageProcessor)(
        size={"height": tile, "width": tile},
        image_grid_pinpoints=anyres_pinpoints(tile, max_tiles),
    )
    return processor_class(LlavaOnevisionProcessor)(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(),
        video_processor=None,
        num_image_tokens=(tile // PATCH) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=vision_aspect_ratio,
    )
