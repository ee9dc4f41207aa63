"""llava checkpoints (``LlavaLlamaForCausalLM``) -> transformers' ``LlavaNextForConditionalGeneration``.

llava's training code (LLaVA-1.5/1.6, ``llava-torch`` or the LLaVA-NeXT repository) saves its own
layout: a Llama language model at the top level (``model.layers``, ``model.embed_tokens``,
``lm_head``), the projector ``model.mm_projector`` and, when the tower was loaded, the CLIP tower
under ``model.vision_tower.vision_tower``; the tower's configuration lives in a separate folder
named by ``mm_vision_tower``. The lmms-eval models of gswa-plugin (``gswa_llava_next``) load
transformers classes, so this converter writes the same network as a transformers LLaVA-NeXT
checkpoint with its processor, and carries the GSWA that the llava integration saved
(``<checkpoint>/gswa``) over unchanged.

Mapping (ours, written from the two architectures):

* language model: ``model.{embed_tokens,layers,norm}`` -> ``model.language_model.*``;
  ``lm_head`` stays;
* vision tower: ``model.vision_tower.vision_tower[.vision_model].*`` ->
  ``model.vision_tower.vision_model.*`` (read from the tower ``mm_vision_tower`` names, a local
  folder or a hub id, when the checkpoint holds no tower weights; its config and image processor
  always come from there);
* projector (``mlp2x_gelu`` only): ``model.mm_projector.0`` / ``.2`` ->
  ``model.multi_modal_projector.linear_1`` / ``linear_2``;
* ``model.image_newline`` stays;
* config: ``mm_vision_select_layer`` -> ``vision_feature_layer``; ``mm_vision_select_feature``
  ``patch`` / ``cls_patch`` -> ``vision_feature_select_strategy`` ``default`` / ``full``;
  ``image_grid_pinpoints`` carried; the image token ``<image>`` is added to the tokenizer (llava
  marks images with the index -200 instead) and the embedding rows grow by one (the new row: the
  mean of the others).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from gswa_plugin.errors import CheckpointError

IMAGE_TOKEN = "<image>"
#: llava's ``conv_vicuna_v1`` (what LLaVA-1.6 Vicuna is trained and evaluated with), as a chat template.
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
CHAT_TEMPLATE = (
    '{{ "' + SYSTEM + '" }}'
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ ' USER: ' }}{% else %}{{ ' ASSISTANT: ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{% if message['role'] != 'user' %}{{ '</s>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ ' ASSISTANT:' }}{% endif %}"
)
_LANGUAGE = re.compile(r"model\.(embed_tokens|layers|norm)\.")
_TOWER = re.compile(r"model\.vision_tower\.vision_tower\.(?:vision_model\.)?")
_PROJECTOR = {"model.mm_projector.0.": "model.multi_modal_projector.linear_1.",
              "model.mm_projector.2.": "model.multi_modal_projector.linear_2."}  # fmt: skip


def map_key(key: str) -> str:
    """The transformers LLaVA-NeXT name of one llava checkpoint key.

    Raises:
        CheckpointError: a key this converter does not know.
    """
    if _LANGUAGE.match(key):
        return "model.language_model." + key[len("model."):]
    if key == "lm_head.weight" or key == "model.image_newline":
        return key
    m = _TOWER.match(key)
    if m:
        return "model.vision_tower.vision_model." + key[m.end():]
    for old, new in _PROJECTOR.items():
        if key.startswith(old):
            return new + key[len(old):]
    raise CheckpointError(f"llava checkpoint key {key!r} has no LLaVA-NeXT counterpart (is this a LLaVA-1.5/1.6 "
                          "LlavaLlamaForCausalLM checkpoint with an mlp2x_gelu projector?)")  # fmt: skip


def _read_config(src: Path) -> dict[str, Any]:
    path = src / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{src}: no config.json; SRC must be a llava checkpoint folder (LlavaLlamaForCausalLM)")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if cfg.get("model_type") != "llava_llama":
        raise CheckpointError(f"{path}: model_type {cfg.get('model_type')!r}, not 'llava_llama'; this converter reads "
                              "llava's LlavaLlamaForCausalLM checkpoints (LLaVA-1.5/1.6 with a Llama/Vicuna LM)")  # fmt: skip
    checks = {
        "mm_projector_type": ("mlp2x_gelu", "transformers' projector is linear-GELU-linear"),
        "mm_patch_merge_type": ("spatial_unpad", "LLaVA-NeXT unpads the anyres grid and adds image_newline"),
        "image_aspect_ratio": ("anyres", "LLaVA-NeXT tiles every image with anyres"),
    }
    for name, (want, why) in checks.items():
        if cfg.get(name) != want:
            raise CheckpointError(f"{path}: {name} is {cfg.get(name)!r}; only {want!r} converts ({why})")
    if cfg.get("mm_vision_select_feature", "patch") not in ("patch", "cls_patch"):
        raise CheckpointError(f"{path}: mm_vision_select_feature {cfg['mm_vision_select_feature']!r} "
                              "(expected 'patch' or 'cls_patch')")  # fmt: skip
    return cfg


def _load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if files:
        return {k: v for f in files for k, v in load_file(str(f)).items()}
    files = sorted(folder.glob("pytorch_model*.bin"))
    if files:
        return {k: v for f in files for k, v in torch.load(f, map_location="cpu", weights_only=True).items()}
    raise CheckpointError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")


def _tower(cfg: dict[str, Any]) -> str:
    """The vision tower the checkpoint names (``mm_vision_tower``): a local folder or a hub id."""
    tower = cfg.get("mm_vision_tower") or cfg.get("vision_tower")
    if not tower:
        raise CheckpointError("the checkpoint's config.json names no vision tower (mm_vision_tower); set it to the "
                              "CLIP tower the model was trained with (e.g. openai/clip-vit-large-patch14-336)")  # fmt: skip
    return str(tower)


def _from_tower(loader: Any, tower: str) -> Any:
    try:
        return loader.from_pretrained(tower)
    except OSError as exc:
        raise CheckpointError(f"cannot load the vision tower {tower!r} (config mm_vision_tower): {exc}; download it "
                              "and set mm_vision_tower in the checkpoint's config.json to the local folder")  # fmt: skip


def _grow(weight: torch.Tensor, rows: int) -> torch.Tensor:
    if weight.shape[0] >= rows:
        return weight
    extra = weight.float().mean(0, keepdim=True).to(weight.dtype).expand(rows - weight.shape[0], -1)
    return torch.cat([weight, extra], 0)


def _carry_gswa(model: Any, saved: Path, out: Path) -> None:
    """Re-save llava's GSWA (adapter ``llava_torch``) for the converted model (adapter
    ``llava_next``): same config and tensors, enabled on the converted model so a misfit fails here."""
    import gswa_plugin
    from gswa_plugin.checkpoint import read_saved, read_weights

    config, _ = read_saved(saved)
    gswa_plugin.enable(model, config.replace(adapter="llava_next"))
    missing, unexpected = model.gswa.load_state_dict(read_weights(saved / "gswa.safetensors"), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{saved}: its GSWA tensors do not fit LLaVA-NeXT's GSWA (missing {missing}, "
                              f"unexpected {unexpected}); was it saved by gswa-plugin's llava integration?")  # fmt: skip
    gswa_plugin.save(model, out)
    gswa_plugin.disable(model)


def convert(src: str | Path, dst: str | Path, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Write ``dst``: a ``LlavaNextForConditionalGeneration`` checkpoint with processor (and ``gswa/``
    when ``src`` has one). Every key is mapped and checked against the transformers class strictly.

    Args:
        src: a llava checkpoint folder (``LlavaLlamaForCausalLM``, tokenizer files beside it).
        dst: output folder (created).
        dtype: dtype of the written weights (None: as in ``src``).

    Returns:
        A summary (tensor counts, image token id, whether GSWA was carried over).

    Raises:
        CheckpointError: not a convertible llava checkpoint (the message says what is wrong).
    """
    from transformers import (
        AutoConfig,
        AutoTokenizer,
        CLIPImageProcessor,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    src, dst = Path(src), Path(dst)
    cfg = _read_config(src)
    tower = _tower(cfg)
    state = _load_tensors(src)
    if not any(_TOWER.match(k) for k in state):  # llava saved no tower weights: take the tower's own
        from transformers import CLIPVisionModel

        weights = _from_tower(CLIPVisionModel, tower).state_dict()
        state.update({"model.vision_tower.vision_tower." + k: v for k, v in weights.items()})
    # GSWA's own parameters (saved inside the model by llava's trainer) travel in gswa/ instead
    converted = {map_key(k): v for k, v in state.items() if not k.startswith("gswa.")}

    tokenizer = AutoTokenizer.from_pretrained(str(src))
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    vocab = max(cfg["vocab_size"], max(tokenizer.get_vocab().values()) + 1)
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if key in converted:
            converted[key] = _grow(converted[key], vocab)

    text_keys = set(LlamaConfig().to_dict()) - {"architectures", "model_type", "transformers_version"}
    text_config = LlamaConfig(**{k: v for k, v in cfg.items() if k in text_keys and k != "vocab_size"}, vocab_size=vocab)
    vision_config = _from_tower(AutoConfig, tower)
    vision_config = getattr(vision_config, "vision_config", vision_config)  # a full CLIP folder
    config = LlavaNextConfig(
        text_config=text_config.to_dict(),
        vision_config=dict(vision_config.to_dict(), model_type="clip_vision_model"),
        image_token_index=image_token_id,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default" if cfg.get("mm_vision_select_feature", "patch") == "patch" else "full",
        vision_feature_layer=cfg.get("mm_vision_select_layer", -2),
        image_grid_pinpoints=[list(p) for p in cfg["image_grid_pinpoints"]],
        tie_word_embeddings=cfg.get("tie_word_embeddings", False),
    )
    with torch.device("meta"):
        model = LlavaNextForConditionalGeneration(config)
    expected = set(model.state_dict())
    # transformers releases differ in whether CLIPVisionModel's state dict names its ``vision_model``
    named = "model.vision_tower.vision_model."
    if not any(k.startswith(named) for k in expected):
        converted = {("model.vision_tower." + k[len(named):] if k.startswith(named) else k): v
                     for k, v in converted.items()}  # fmt: skip
    missing, extra = sorted(expected - set(converted)), sorted(set(converted) - expected)
    if config.tie_word_embeddings and missing == ["lm_head.weight"]:
        missing = []
    if missing or extra:
        raise CheckpointError(f"{src}: after mapping, missing {missing[:5]} (of {len(missing)}), unexpected "
                              f"{extra[:5]} (of {len(extra)}) against LlavaNextForConditionalGeneration")  # fmt: skip
    if dtype is not None:
        converted = {k: v.to(dtype) if v.is_floating_point() else v for k, v in converted.items()}
    model.load_state_dict(converted, strict=not config.tie_word_embeddings, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dst))

    clip = _from_tower(CLIPImageProcessor, tower)
    side = clip.size.get("shortest_edge") or clip.size.get("height")
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": side},
        crop_size=clip.crop_size,
        image_mean=clip.image_mean,
        image_std=clip.image_std,
        image_grid_pinpoints=config.image_grid_pinpoints,
    )
    tokenizer.padding_side = "left"  # batched generation
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        image_token=IMAGE_TOKEN,
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,  # CLIP's CLS
    )
    processor.save_pretrained(str(dst))
    gswa = (src / "gswa").is_dir()
    if gswa:
        _carry_gswa(model, src / "gswa", dst / "gswa")
    return {"tensors": len(converted), "image_token_id": image_token_id, "vocab_size": vocab, "gswa": gswa}
