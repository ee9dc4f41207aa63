"""More tiny hosts built in code, offline: Idefics3, SmolVLM, Aya Vision, Cohere2 Vision and the
InternVL2 remote-code stand-in.

Each host is the real transformers class with a small random config, and its real processor
(the PIL image-processor variant where torchvision is missing) with a word-level tokenizer that
holds the family's special tokens, so that the real processor writes the real prompt format.
Tile sizes are small (64 px) to keep tests fast; the tiling logic is the processors' own.
"""

from __future__ import annotations

from typing import Any

import torch

from gswa_plugin.hf import image_processor_class, processor_class
from gswa_plugin.testing.tiny import WORDS, text_config

#: Special tokens every tiny tokenizer starts with.
BASE_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
#: Tile edge (px) of the tiny hosts in this module.
TILE = 64


def word_tokenizer(specials: list[str], extra_special: dict[str, str] | None = None, words: list[str] | None = None) -> Any:
    """A ``PreTrainedTokenizerFast`` over a word-level vocabulary: ``BASE_SPECIALS``, then
    ``specials`` (each one token), then ``words``. Angle-bracket tokens are split off whole."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in BASE_SPECIALS + specials + (words if words is not None else WORDS):
        vocab.setdefault(tok, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(r"<[^>]+>", behavior="isolated"), pre_tokenizers.WhitespaceSplit()]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=extra_special or {},
    )
    tok.add_special_tokens({"additional_special_tokens": [s for s in specials if s.startswith("<")]})
    return tok


def _text_config(model_type: str, vocab_size: int, hidden: int = 64, layers: int = 2, **extra: Any) -> dict[str, Any]:
    return text_config(model_type, vocab_size, hidden, layers, max_positions=4096, **extra)


def _finish(model: Any) -> Any:
    model = model.eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    return model


# --- Idefics3 / SmolVLM ---------------------------------------------------------------------
IDEFICS3_SPECIALS = ["<fake_token_around_image>", "<global-img>", "<image>", "<end_of_utterance>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
]


def idefics3_tokenizer() -> Any:
    return word_tokenizer(IDEFICS3_SPECIALS, {"image_token": "<image>"})


def tiny_idefics3(family: str = "idefics3", seed: int = 0, tile: int = TILE) -> Any:
    """A tiny ``Idefics3ForConditionalGeneration`` (``family="idefics3"``) or
    ``SmolVLMForConditionalGeneration`` (``family="smolvlm"``): SigLIP-like encoder with
    ``tile`` px inputs and 16 px patches, pixel shuffle 2 (4 tokens per view), Llama text model."""
    import transformers

    cls_name = {"idefics3": "Idefics3", "smolvlm": "SmolVLM"}[family]
    config_cls = getattr(transformers, f"{cls_name}Config")
    model_cls = getattr(transformers, f"{cls_name}ForConditionalGeneration")
    tok = idefics3_tokenizer()
    cfg = config_cls(
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=tile, patch_size=16
        ),
        text_config=_text_config("llama", len(tok)),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return _finish(model_cls(cfg))


def tiny_idefics3_processor(family: str = "idefics3", tile: int = TILE, longest_edge: int = 3 * TILE) -> Any:
    """The real ``Idefics3Processor`` / ``SmolVLMProcessor`` with its real image processor: images
    resized to at most ``longest_edge`` px, split into ``tile`` px tiles (row-major) plus the
    global view last."""
    import transformers

    cls_name = {"idefics3": "Idefics3", "smolvlm": "SmolVLM"}[family]
    image_processor = image_processor_class(getattr(transformers, f"{cls_name}ImageProcessor"))(
        size={"longest_edge": longest_edge}, max_image_size={"longest_edge": tile}
    )
    proc_cls = processor_class(getattr(transformers, f"{cls_name}Processor"))
    kwargs: dict[str, Any] = {"video_processor": None} if family == "smolvlm" else {}
    return proc_cls(image_processor=image_processor, tokenizer=idefics3_tokenizer(), image_seq_len=(tile // 16) ** 2 // 4, **kwargs)


# --- Aya Vision -----------------------------------------------------------------------------
AYA_SPECIALS = ["<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>", "<image>"]
#: The tile markers Aya's processor writes as plain text (``TILE_1``.. and ``TILE_GLOBAL``).
AYA_TILE_WORDS = [f"TILE_{i}" for i in range(1, 13)] + ["TILE_GLOBAL"]


def aya_tokenizer() -> Any:
    return word_tokenizer(AYA_SPECIALS, {"image_token": "<image>"}, WORDS + AYA_TILE_WORDS)


def _siglip_config(tile: int, patch: int = 16) -> dict[str, Any]:
    """The tiny SigLIP tower of Aya Vision, Cohere2 Vision (16 px patches) and Gemma 3 (8 px): no head."""
    return dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=tile,
        patch_size=patch,
        vision_use_head=False,
    )


def tiny_aya_vision(seed: int = 0, tile: int = TILE) -> Any:
    """A tiny ``AyaVisionForConditionalGeneration``: SigLIP tower (``tile`` px, 16 px patches),
    pixel shuffle 2 (4 tokens per view), Cohere2 text model."""
    from transformers import AyaVisionConfig, AyaVisionForConditionalGeneration

    tok = aya_tokenizer()
    cfg = AyaVisionConfig(
        vision_config=_siglip_config(tile),
        text_config=_text_config("cohere2", len(tok), layer_types=["full_attention", "full_attention"]),
        image_token_index=tok.convert_tokens_to_ids("<|IMG_PATCH|>"),
        downsample_factor=2,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return _finish(AyaVisionForConditionalGeneration(cfg))


def tiny_aya_vision_processor(tile: int = TILE, max_patches: int = 12) -> Any:
    """The real ``AyaVisionProcessor`` with the real GotOcr2 image processor (``tile`` px tiles,
    row-major, thumbnail last)."""
    from transformers import AyaVisionProcessor, GotOcr2ImageProcessor

    image_processor = image_processor_class(GotOcr2ImageProcessor)(
        size={"height": tile, "width": tile}, crop_to_patches=True, min_patches=1, max_patches=max_patches
    )
    return processor_class(AyaVisionProcessor)(
        image_processor=image_processor, tokenizer=aya_tokenizer(), img_size=tile, patch_size=16, downsample_factor=2
    )


# --- InternVL2 remote code (stand-in) -------------------------------------------------------
INTERNVL_CHAT_SPECIALS = ["<img>", "</img>", "<IMG_CONTEXT>", "<|im_start|>", "<|im_end|>", "<image>"]
INTERNVL_CHAT_TILE = 56


def internvl_chat_tokenizer() -> Any:
    """A word-level tokenizer holding InternVL2's image tokens and the ``internlm2-chat`` markers."""
    return word_tokenizer(INTERNVL_CHAT_SPECIALS, None, WORDS + ["system", "you", "are", "helpful"])


def tiny_internvl_chat(seed: int = 0, tile: int = INTERNVL_CHAT_TILE, select_layer: int = -1) -> Any:
    """A tiny ``InternVLChatModel`` (the InternVL2 remote-code
    stand-in): InternViT with CLS (``tile`` px, patch 14), pixel shuffle 0.5, ``mlp1``, and a Qwen2
    language model (as in InternVL2-1B). ``img_context_token_id`` is set from the tiny tokenizer,
    as InternVL's training script does."""
    from gswa_plugin.testing.standins.internvl_chat import InternVLChatConfig, InternVLChatModel

    tok = internvl_chat_tokenizer()
    cfg = InternVLChatConfig(
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=[tile, tile],
            patch_size=[14, 14],
            use_mean_pooling=True,
        ),
        llm_config=dict(
            _text_config("qwen2", len(tok)),
            architectures=["Qwen2ForCausalLM"],
        ),
        select_layer=select_layer,
        force_image_size=tile,
    )
    cfg.llm_config._attn_implementation = "eager"
    cfg.vision_config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = InternVLChatModel(cfg).eval()
    model.img_context_token_id = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    model.language_model.generation_config.pad_token_id = 0
    return model


def internvl_chat_tiles(images: list[Any], tile: int = INTERNVL_CHAT_TILE, max_num: int = 6) -> tuple[torch.Tensor, list[int]]:
    """Tile images as InternVL2's ``load_image``/``dynamic_preprocess`` does (closest aspect-ratio
    grid of at most ``max_num`` tiles, row-major, thumbnail last), with the real GotOcr2 image
    processor that transformers ported that algorithm into. Returns ``(pixel_values, num_patches_list)``."""
    from transformers import GotOcr2ImageProcessor

    proc = image_processor_class(GotOcr2ImageProcessor)(
        size={"height": tile, "width": tile},
        crop_to_patches=True,
        min_patches=1,
        max_patches=max_num,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    out = proc(images=images, return_tensors="pt")
    return out["pixel_values"], [int(n) for n in out["num_patches"]]


def internvl_chat_inputs(images: list[Any], questions: list[str], model: Any, tile: int = INTERNVL_CHAT_TILE) -> dict[str, Any]:
    """Training-path inputs of the InternVL2 stand-in, built the way InternVL's fine-tuning script
    does: one image per sample, ``<img>`` + ``<IMG_CONTEXT>`` x ``num_image_token * tiles`` +
    ``</img>`` in the prompt, and ``image_flags`` of 1 for every real tile."""
    from gswa_plugin.testing.standins.internvl_chat import IMG_CONTEXT_TOKEN, IMG_END_TOKEN, IMG_START_TOKEN

    pixel_values, num_patches = internvl_chat_tiles(images, tile)
    tok = internvl_chat_tokenizer()
    texts = [
        q.replace("<image>", IMG_START_TOKEN + IMG_CONTEXT_TOKEN * model.num_image_token * n + IMG_END_TOKEN)
        for q, n in zip(questions, num_patches)
    ]
    enc = tok(texts, return_tensors="pt", padding=True)
    return {
        "pixel_values": pixel_values,
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "image_flags": torch.ones(pixel_values.shape[0], 1, dtype=torch.long),
    }


# --- GOT-OCR2 (no built-in adapter: retrofitted with the declarative adapter) ---------------
GOT_SPECIALS = ["<img>", "</img>", "<imgpad>", "<|im_start|>", "<|im_end|>"]
GOT_TILE = 128
#: Words of GOT-OCR2's fixed prompt (system query and the OCR instruction).
GOT_WORDS = "system you should follow instructions carefully and explain your answers in detail. ocr upon patch reference: user assistant".split()


def got_ocr2_tokenizer() -> Any:
    return word_tokenizer(GOT_SPECIALS, {"image_token": "<imgpad>"}, WORDS + GOT_WORDS)


def tiny_got_ocr2(seed: int = 0, tile: int = GOT_TILE) -> Any:
    """A tiny ``GotOcr2ForConditionalGeneration``: SAM-style windowed ViT (``tile`` px, 16 px
    patches, a channels-first neck), two stride-2 convolutions (4 tokens per view), Qwen2 text model."""
    from transformers import GotOcr2Config, GotOcr2ForConditionalGeneration

    tok = got_ocr2_tokenizer()
    cfg = GotOcr2Config(
        vision_config=dict(
            hidden_size=32,
            output_channels=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=tile,
            patch_size=16,
            window_size=4,
            global_attn_indexes=[1],
            mlp_dim=64,
            initializer_range=0.02,  # the default (1e-10) makes every view's features identical
        ),
        text_config=_text_config("qwen2", len(tok)),
        image_token_index=tok.convert_tokens_to_ids("<imgpad>"),
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return _finish(GotOcr2ForConditionalGeneration(cfg))


def tiny_got_ocr2_processor() -> Any:
    """The real ``GotOcr2Processor`` with the real GotOcr2 image processor (PIL)."""
    from transformers import GotOcr2ImageProcessor, GotOcr2Processor

    image_processor = image_processor_class(GotOcr2ImageProcessor)(size={"height": GOT_TILE, "width": GOT_TILE})
    return processor_class(GotOcr2Processor)(image_processor=image_processor, tokenizer=got_ocr2_tokenizer())


def got_ocr2_inputs(images: list[Any], max_patches: int = 6) -> dict[str, Any]:
    """GOT-OCR2's multi-crop inputs for a batch of images: the processor writes its own OCR
    prompt, tiles each image into at most ``max_patches`` crops (row-major) plus a thumbnail
    last, and expands ``<imgpad>`` (4 per view here) between ``<img>`` and ``</img>``."""
    proc = tiny_got_ocr2_processor()
    return dict(
        proc(
            images,
            crop_to_patches=True,
            max_patches=max_patches,
            num_image_tokens=(GOT_TILE // 16 // 4) ** 2,
            return_tensors="pt",
            padding=True,
        )
    )



def tiny_got_ocr2_grid(seed: int = 0, batch_axis: bool = False) -> Any:
    """STAND-IN for a host whose image features have more than three dimensions: the tiny
    ``GotOcr2ForConditionalGeneration`` of [`tiny_got_ocr2`][gswa_plugin.testing.tiny_more.tiny_got_ocr2]
    (same weights for the same seed), with ``model.model`` switched to a one-method subclass whose
    ``get_image_features`` returns ``pooler_output`` as the projector's token grid
    ``[views, h, w, dim]`` (``[1, views, h, w, dim]`` with ``batch_axis``) instead of
    ``[views, h * w, dim]``. No host in transformers 5.24 that reaches its language model through
    embeddings has such a seam (Llama 3.2 Vision's 5-D features feed cross-attention and have a Python
    adapter); this one keeps every other part real: GOT-OCR2's forward places the features at the
    placeholders in memory order, so the language model receives exactly what the unchanged host
    gives, and the real GotOcr2 processor lays out the views."""
    from transformers.models.got_ocr2.modeling_got_ocr2 import GotOcr2Model

    class GridFeaturesGotOcr2Model(GotOcr2Model):
        def get_image_features(self, pixel_values: torch.Tensor, **kwargs: Any) -> Any:
            out = super().get_image_features(pixel_values, **kwargs)
            views, tokens, dim = out.pooler_output.shape
            side = int(tokens**0.5)
            grid = out.pooler_output.reshape(views, side, tokens // side, dim)
            out.pooler_output = grid[None] if batch_axis else grid
            return out

    model = tiny_got_ocr2(seed)
    model.model.__class__ = GridFeaturesGotOcr2Model
    return model

# --- Gemma 3 (no built-in adapter: pan-and-scan retrofitted with the declarative adapter) ----
GEMMA3_SPECIALS = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
GEMMA3_TILE = 32
#: Words of the sentence Gemma 3's processor writes around pan-and-scan crops.
GEMMA3_CROP_WORDS = "Here is the original image and here are some crops to help you see better".split()


def gemma3_tokenizer() -> Any:
    return word_tokenizer(
        GEMMA3_SPECIALS,
        {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
        WORDS + GEMMA3_CROP_WORDS,
    )


def tiny_gemma3(seed: int = 0, tile: int = GEMMA3_TILE) -> Any:
    """A tiny ``Gemma3ForConditionalGeneration``: SigLIP tower (``tile`` px, 8 px patches, 16
    patches), average-pooled to 4 tokens per view, Gemma 3 text model. The projection weight,
    which Gemma 3 initialises to zero, is drawn at random so that views differ."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    tok = gemma3_tokenizer()
    cfg = Gemma3Config(
        vision_config=_siglip_config(tile, patch=8),
        text_config=_text_config(
            "gemma3_text", len(tok), head_dim=16, sliding_window=64, layer_types=["full_attention"] * 2
        ),
        mm_tokens_per_image=4,
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(cfg)
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.2)
    return _finish(model)


def tiny_gemma3_processor(tile: int = GEMMA3_TILE) -> Any:
    """The real ``Gemma3Processor`` with the real Gemma 3 image processor (PIL), pan-and-scan on:
    an image wider or taller than 1.2:1 gets up to 4 crops after its original (global) view."""
    from transformers import Gemma3ImageProcessor, Gemma3Processor

    image_processor = image_processor_class(Gemma3ImageProcessor)(
        size={"height": tile, "width": tile},
        do_pan_and_scan=True,
        pan_and_scan_min_crop_size=tile // 2,
        pan_and_scan_max_num_crops=4,
        pan_and_scan_min_ratio_to_activate=1.2,
    )
    return processor_class(Gemma3Processor)(image_processor=image_processor, tokenizer=gemma3_tokenizer(), image_seq_length=4)


def gemma3_inputs(images: list[Any], texts: list[str]) -> dict[str, Any]:
    """Gemma 3 pan-and-scan inputs: one prompt per image (``texts`` hold ``<start_of_image>``)."""
    proc = tiny_gemma3_processor()
    out = proc(
        text=texts,
        images=[[im] for im in images],
        do_pan_and_scan=True,  # the processor's own default (False) overrides the image processor's
        pan_and_scan_min_crop_size=GEMMA3_TILE // 2,
        return_tensors="pt",
        padding=True,
    )
    return dict(out)


# --- Llama 3.2 Vision (mllama): a cross-attention host --------------------------------------
MLLAMA_SPECIALS = ["<|image|>", "<|python_tag|>"]
MLLAMA_TILE = 32


def mllama_tokenizer() -> Any:
    return word_tokenizer(MLLAMA_SPECIALS, {"image_token": "<|image|>"})


def tiny_mllama(seed: int = 0, tile: int = MLLAMA_TILE) -> Any:
    """A tiny ``MllamaForConditionalGeneration``: vision model with 32 px tiles (8 px patches,
    up to 4 tiles per image), a Llama-style text model whose layer 1 is a cross-attention layer
    (its gates, which Mllama initialises to 0, set to 1 so that the images reach the logits)."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    tok = mllama_tokenizer()
    cfg = MllamaConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_global_layers=1,
            attention_heads=2,
            intermediate_layers_indices=[0],
            vision_output_dim=64,
            image_size=tile,
            patch_size=8,
            max_num_tiles=4,
            supported_aspect_ratios=[[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]],
        ),
        text_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(tok) + 8,
            cross_attention_layers=[1],
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            max_position_embeddings=4096,
        ),
        image_token_index=tok.convert_tokens_to_ids("<|image|>"),
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = MllamaForConditionalGeneration(cfg)
    with torch.no_grad():  # Mllama initialises its cross-attention gates to 0 (images ignored)
        for name, p in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                p.fill_(1.0)
    return _finish(model)


def mllama_inputs(images: list[Any], texts: list[str]) -> dict[str, Any]:
    """Inputs of the real ``MllamaProcessor`` (PIL image processor, ``tile`` px tiles, at most 4
    per image, no thumbnail) for one image per prompt."""
    from transformers import MllamaImageProcessor, MllamaProcessor

    image_processor = image_processor_class(MllamaImageProcessor)(
        size={"height": MLLAMA_TILE, "width": MLLAMA_TILE}, max_image_tiles=4
    )
    proc = processor_class(MllamaProcessor)(image_processor=image_processor, tokenizer=mllama_tokenizer())
    return dict(proc(text=texts, images=[[im] for im in images], return_tensors="pt", padding=True))


# --- Cohere2 Vision (no built-in adapter: retrofitted with the declarative adapter) ----------
COHERE2_SPECIALS = ["<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>", "<image>"]


def cohere2_vision_tokenizer() -> Any:
    return word_tokenizer(
        COHERE2_SPECIALS,
        {
            "image_token": "<|IMG_PATCH|>",
            "boi_token": "<|START_OF_IMG|>",
            "eoi_token": "<|END_OF_IMG|>",
            "img_line_break_token": "<|IMG_LINE_BREAK|>",
        },
    )


def tiny_cohere2_vision(seed: int = 0, tile: int = TILE) -> Any:
    """A tiny ``Cohere2VisionForConditionalGeneration``: SigLIP tower (``tile`` px, 16 px patches),
    pixel shuffle 2 (4 tokens per view), SwiGLU projector, Cohere2 text model."""
    from transformers import Cohere2VisionConfig, Cohere2VisionForConditionalGeneration

    tok = cohere2_vision_tokenizer()
    cfg = Cohere2VisionConfig(
        vision_config=_siglip_config(tile),
        text_config=_text_config("cohere2", len(tok), layer_types=["full_attention", "full_attention"]),
        image_token_id=tok.convert_tokens_to_ids("<|IMG_PATCH|>"),
        downsample_factor=2,
        alignment_intermediate_size=64,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return _finish(Cohere2VisionForConditionalGeneration(cfg))


def cohere2_vision_inputs(images: list[Any], texts: list[str], tile: int = TILE, max_patches: int = 6) -> dict[str, Any]:
    """Inputs of the real ``Cohere2VisionProcessor`` (the prompt format: ``<|START_OF_IMG|>``, per
    view its placeholders and a line break, ``<|END_OF_IMG|>``). Cohere2 Vision's own image
    processor needs torchvision, which is not installed here: the GotOcr2 image processor (PIL)
    stands in for it. Both cut row-major crops with the thumbnail LAST; the grid each picks for
    an aspect ratio may differ."""
    from transformers import Cohere2VisionProcessor, GotOcr2ImageProcessor

    image_processor = image_processor_class(GotOcr2ImageProcessor)(
        size={"height": tile, "width": tile}, crop_to_patches=True, min_patches=1, max_patches=max_patches
    )
    image_processor.patch_size = tile // 16 // 2  # placeholders per view side after the pixel shuffle
    proc = processor_class(Cohere2VisionProcessor)(image_processor=image_processor, tokenizer=cohere2_vision_tokenizer())
    return dict(proc(text=texts, images=[[im] for im in images], return_tensors="pt", padding=True))
