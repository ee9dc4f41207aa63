"""The llava package (PyPI llava-torch): a tiny LLaVA-1.6 built from llava's own classes.

``LlavaLlamaForCausalLM`` with ``image_aspect_ratio: anyres`` and ``mm_patch_merge_type:
spatial_unpad``; its CLIP vision tower is a tiny ``CLIPVisionModel`` saved to a temporary folder
(llava loads towers by path); images are tiled by llava's own ``process_images`` (base image
first, then the anyres tiles) with a real ``CLIPImageProcessor``, prompts tokenised by llava's
``tokenizer_image_token``. Only present where the ``llava`` package is installed (the
``llava_torch`` adapter registers only there); the llava CI step runs it in ``.venv-llava``.
"""

from __future__ import annotations

import functools
import importlib.util
import tempfile
from typing import Any

import torch

from gswa_plugin.testing.tiny import sample_image, tiny_tokenizer

from . import HostCase

#: Tile side of the tiny tower (patch 14 -> 4x4 patches + CLS).
TILE = 56
#: anyres grids the tiny model may choose (LLaVA-1.6 uses multiples of 336 px).
GRID_PINPOINTS = [[56, 112], [112, 56], [112, 112], [56, 168], [168, 56]]
VISION_HIDDEN = 32
TEXT_HIDDEN = 64


@functools.lru_cache(maxsize=None)
def tower_dir() -> str:
    """A folder holding a tiny CLIP vision model and its image processor (built once per process)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    path = tempfile.mkdtemp(prefix="gswa-tiny-clip-")
    cfg = CLIPVisionConfig(
        hidden_size=VISION_HIDDEN,
        intermediate_size=VISION_HIDDEN * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=TILE,
        patch_size=14,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        CLIPVisionModel(cfg).save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE}, do_center_crop=True
    ).save_pretrained(path)
    return path


def tiny_llava_config(**overrides: Any) -> Any:
    """A ``LlavaConfig`` (llava's LLaMA flavour) for a tiny LLaVA-1.6 with anyres + spatial_unpad."""
    from llava.model.language_model.llava_llama import LlavaConfig

    tok = tiny_tokenizer()
    values = dict(
        vocab_size=len(tok),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=TEXT_HIDDEN * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        mm_vision_tower=tower_dir(),
        mm_hidden_size=VISION_HIDDEN,
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        mm_patch_merge_type="spatial_unpad",
        image_aspect_ratio="anyres",
        image_grid_pinpoints=GRID_PINPOINTS,
        mm_use_im_start_end=False,
        tokenizer_padding_side="right",
    )
    values.update(overrides)
    return LlavaConfig(**values)


def tiny_llava(seed: int = 0, **overrides: Any) -> Any:
    """A tiny ``LlavaLlamaForCausalLM`` with its vision tower loaded, eval mode, fp32."""
    from llava.model import LlavaLlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaLlamaForCausalLM(tiny_llava_config(**overrides))
        model.get_vision_tower().load_model()
        # llava allocates image_newline with torch.empty and fills it only when training from a
        # fresh projector; give it defined values.
        with torch.no_grad():
            model.get_model().image_newline.normal_(0.0, TEXT_HIDDEN**-0.5)
    return model.float().eval()


@functools.lru_cache(maxsize=None)
def image_processor() -> Any:
    """The tower's real ``CLIPImageProcessor`` (what llava's training code tiles with)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor.from_pretrained(tower_dir())


def llava_inputs(model_config: Any = None) -> dict[str, Any]:
    """Two prompts with one real photograph each; the images get different anyres grids."""
    from llava.constants import DEFAULT_IMAGE_TOKEN
    from llava.mm_utils import process_images, tokenizer_image_token

    cfg = model_config or tiny_llava_config()
    tok = tiny_tokenizer()
    photos = [sample_image("astronaut"), sample_image("coffee").resize((300, 100))]
    images = process_images(photos, image_processor(), cfg)
    if isinstance(images, torch.Tensor):  # same grid for both: keep the per-image list form
        images = list(images)
    prompts = [f"{DEFAULT_IMAGE_TOKEN} describe the image", f"what is in the picture {DEFAULT_IMAGE_TOKEN} ?"]
    ids = [tokenizer_image_token(p, tok, return_tensors="pt") for p in prompts]
    width = max(len(i) for i in ids)
    input_ids = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = seq
        attention_mask[row, : len(seq)] = 1
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        images=images,
        image_sizes=[p.size for p in photos],
    )


def llava_installed() -> bool:
    return importlib.util.find_spec("llava") is not None


CASE = (
    HostCase(
        adapter="llava_torch",
        make_model=tiny_llava,
        make_inputs=llava_inputs,
        views_per_image=[5, 4],  # astronaut: base + 2x2 tiles; coffee 3:1: base + 1x3 tiles
        language_model=lambda m: m.model,
        supports_generate=False,  # llava-torch's generate() predates transformers 5's cache API
    )
    if llava_installed()
    else None
)
