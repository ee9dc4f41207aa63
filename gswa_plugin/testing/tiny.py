"""Tiny host models, tokenizers and processors built in code, offline.

Used by ``gswa demo`` and the tests: real transformers classes (``InternVLForConditionalGeneration``,
``InternVLProcessor``, ``GotOcr2ImageProcessor``) with small random configs, and a word-level
tokenizer made with the ``tokenizers`` library, so nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from gswa_plugin.hf import image_processor_class, processor_class

#: Word-level vocabulary of the tiny tokenizers; special tokens come first.
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>", "<image>"]
WORDS = (
    "what is in the image describe a the this picture photo of cat coffee cup person astronaut "
    "red green blue yellow colour color shape square circle tile answer question : ? . , user assistant"
).split()


def tiny_tokenizer(extra_special: dict[str, str] | None = None) -> Any:
    """A ``PreTrainedTokenizerFast`` over a small word-level vocabulary, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(r"<[^>]+>", behavior="isolated"), pre_tokenizers.WhitespaceSplit()]
    )
    specials = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
        "image_token": "<image>",
    }
    specials.update(extra_special or {})
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=specials,
    )
    tok.add_special_tokens({"additional_special_tokens": ["<img>", "</img>", "<IMG_CONTEXT>", "<video>", "<image>"]})
    return tok


def text_config(
    model_type: str, vocab_size: int, hidden: int = 64, layers: int = 2, max_positions: int = 4096, **extra: Any
) -> dict[str, Any]:
    """A small decoder config dict (4 heads, 2 KV heads, MLP twice as wide, pad 0 / bos 1 / eos 2)."""
    return dict(
        model_type=model_type,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=max_positions,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **extra,
    )


def tiny_internvl_config(
    image_size: int = 448,
    vision_hidden: int = 32,
    text_hidden: int = 64,
    vision_layers: int = 1,
    text_layers: int = 2,
    vocab_size: int | None = None,
) -> Any:
    """A small ``InternVLConfig`` (InternViT-style vision tower with CLS, Qwen2 language model)."""
    from transformers import InternVLConfig

    vocab = vocab_size or len(SPECIAL_TOKENS) + len(WORDS)
    patch = 14
    return InternVLConfig(
        vision_config=dict(
            hidden_size=vision_hidden,
            num_hidden_layers=vision_layers,
            num_attention_heads=2,
            intermediate_size=vision_hidden * 2,
            image_size=[image_size, image_size],
            patch_size=[patch, patch],
            use_mean_pooling=True,
        ),
        text_config=text_config("qwen2", vocab, text_hidden, text_layers, max_positions=8192),
        image_token_id=SPECIAL_TOKENS.index("<IMG_CONTEXT>"),
        image_seq_length=(image_size // patch) ** 2 // 4,
        downsample_ratio=0.5,
    )


def tiny_internvl(seed: int = 0, **config_kwargs: Any) -> Any:
    """A randomly initialised tiny ``InternVLForConditionalGeneration`` (eval mode, fp32, eager attention)."""
    from transformers import InternVLForConditionalGeneration

    cfg = tiny_internvl_config(**config_kwargs)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(cfg).eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    return model


def tiny_internvl_processor(image_size: int = 448, max_patches: int = 12) -> Any:
    """The real ``InternVLProcessor`` with the real GotOcr2 image processor (tiles of ``image_size``
    px, thumbnail last) and the tiny tokenizer."""
    from transformers import GotOcr2ImageProcessor, InternVLProcessor

    image_processor = image_processor_class(GotOcr2ImageProcessor)(
        size={"height": image_size, "width": image_size},
        crop_to_patches=True,
        min_patches=1,
        max_patches=max_patches,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    return processor_class(InternVLProcessor)(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(),
        image_seq_length=(image_size // 14) ** 2 // 4,
    )


def sample_image(name: str = "astronaut") -> Image.Image:
    """A real photograph shipped by scikit-image (``astronaut``, ``coffee``, ``chelsea``, ``page``, ...)."""
    try:
        from skimage import data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the sample photographs come from scikit-image: `pip install gswa-plugin[demo]`"
        ) from exc
    arr = np.asarray(getattr(data, name)())
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return Image.fromarray(arr[..., :3].astype(np.uint8))
