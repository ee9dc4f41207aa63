"""InternVL2 checkpoints in the released layout -> transformers' native InternVL format.

The released InternVL2 checkpoints (``InternVLChatModel``, loaded with remote code) hold an
InternViT vision tower (``vision_model.*``), the projector ``mlp1.*`` and an InternLM2 language
model (``language_model.*`` with a fused ``wqkv``). transformers' native
``InternVLForConditionalGeneration`` holds the same network under other names with a Llama
language model, so the converted checkpoint runs on stock transformers classes without remote
code, and GSWA's ``internvl`` adapter applies to it.

Mapping (ours, written from the two architectures; transformers' own conversion script maps the
same way):

* vision: ``vision_model`` -> ``model.vision_tower``; ``encoder.layers`` -> ``encoder.layer``;
  ``embeddings.class_embedding`` -> ``embeddings.cls_token``; ``embeddings.position_embedding`` ->
  ``embeddings.position_embeddings``; ``embeddings.patch_embedding`` ->
  ``embeddings.patch_embeddings.projection``; ``ls1``/``ls2`` -> ``lambda_1``/``lambda_2``;
  ``norm1``/``norm2`` -> ``layernorm_before``/``layernorm_after``; ``attn.proj`` ->
  ``attention.projection_layer``; ``attn.q_norm``/``k_norm`` -> ``attention.q_norm``/``k_norm``;
  the fused ``attn.qkv`` ``[3D, D]`` is cut into ``q_proj``, ``k_proj``, ``v_proj`` (rows in
  that order);
* projector: ``mlp1.0`` -> ``multi_modal_projector.layer_norm``, ``mlp1.1`` -> ``linear_1``,
  ``mlp1.3`` -> ``linear_2``;
* language model (InternLM2 -> Llama): ``model.tok_embeddings`` -> ``embed_tokens``;
  ``attention.wo`` -> ``self_attn.o_proj``; ``feed_forward.w1``/``w3``/``w2`` ->
  ``mlp.gate_proj``/``up_proj``/``down_proj``; ``attention_norm``/``ffn_norm`` ->
  ``input_layernorm``/``post_attention_layernorm``; ``output`` -> ``lm_head``; the fused
  ``attention.wqkv`` is laid out per key-value head as ``[q_1 .. q_g, k, v]`` (``g`` query heads
  per kv head) and is cut into ``q_proj``, ``k_proj``, ``v_proj`` head group by head group.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from gswa_plugin.errors import CheckpointError

#: Token InternVL2 puts 256 times per tile (id 92546 in InternVL2-2B's tokenizer).
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"
#: InternVL2-2B's id of ``<IMG_CONTEXT>``, used when the tokenizer files do not say.
DEFAULT_IMAGE_TOKEN_ID = 92546
#: InternVL2's default system message (``internlm2-chat`` in InternVL's ``conversation.py``), sent
#: by its ``chat()`` and used in its fine-tuning data.
SYSTEM_PROMPT = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
#: Chat template of the converted processor: InternVL2's ``internlm2-chat`` format (no newline after
#: ``<|im_end|>``; the default system message first when the conversation has none; text stripped of
#: surrounding whitespace as InternVL's training data is; each image as ``<IMG_CONTEXT>\n`` before
#: the text, as InternVL2's ``chat()`` puts ``<image>\n``).
CHAT_TEMPLATE = (
    "{% if messages and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n' + '" + SYSTEM_PROMPT + "' + '<|im_end|>' }}{% endif %}"
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}"
)

_VISION_RULES: list[tuple[str, str]] = [
    (r"^vision_model\.", "model.vision_tower."),
    (r"\.encoder\.layers\.", ".encoder.layer."),
    (r"\.embeddings\.class_embedding$", ".embeddings.cls_token"),
    (r"\.embeddings\.position_embedding$", ".embeddings.position_embeddings"),
    (r"\.embeddings\.patch_embedding\.", ".embeddings.patch_embeddings.projection."),
    (r"\.ls1$", ".lambda_1"),
    (r"\.ls2$", ".lambda_2"),
    (r"\.norm1\.", ".layernorm_before."),
    (r"\.norm2\.", ".layernorm_after."),
    (r"\.attn\.proj\.", ".attention.projection_layer."),
    (r"\.attn\.(q_norm|k_norm)\.", r".attention.\1."),
    (r"\.attn\.qkv\.", ".attention.qkv."),
    (r"\.mlp\.(fc1|fc2)\.", r".mlp.\1."),
]
_TEXT_RULES: list[tuple[str, str]] = [
    (r"^language_model\.output\.", "lm_head."),
    (r"^language_model\.model\.", "model.language_model."),
    (r"\.tok_embeddings\.", ".embed_tokens."),
    (r"\.attention\.wo\.", ".self_attn.o_proj."),
    (r"\.attention\.wqkv\.", ".self_attn.wqkv."),
    (r"\.feed_forward\.w1\.", ".mlp.gate_proj."),
    (r"\.feed_forward\.w3\.", ".mlp.up_proj."),
    (r"\.feed_forward\.w2\.", ".mlp.down_proj."),
    (r"\.attention_norm\.", ".input_layernorm."),
    (r"\.ffn_norm\.", ".post_attention_layernorm."),
]
_PROJECTOR_RULES: list[tuple[str, str]] = [
    (r"^mlp1\.0\.", "model.multi_modal_projector.layer_norm."),
    (r"^mlp1\.1\.", "model.multi_modal_projector.linear_1."),
    (r"^mlp1\.3\.", "model.multi_modal_projector.linear_2."),
]


def map_key(key: str) -> str:
    """Native name of a released-layout key (fused ``qkv``/``wqkv`` keep a marker name).

    Raises:
        CheckpointError: the key belongs to no known part.
    """
    if key.startswith("vision_model."):
        rules = _VISION_RULES
    elif key.startswith("language_model."):
        rules = _TEXT_RULES
    elif key.startswith("mlp1."):
        rules = _PROJECTOR_RULES
    else:
        raise CheckpointError(
            f"key {key!r} is not part of an InternVL2 checkpoint in the released layout "
            "(expected vision_model.*, mlp1.* or language_model.*)"
        )
    out = key
    for pattern, repl in rules:
        out = re.sub(pattern, repl, out)
    return out


def split_wqkv(wqkv: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int) -> tuple[torch.Tensor, ...]:
    """Cut InternLM2's fused ``wqkv`` ``[(H + 2 K) d, hidden]`` into Llama's q, k, v projections.

    InternLM2 lays the rows out per key-value head: ``g = H / K`` query heads, then that group's
    key head, then its value head. Works for weights and (1-D) biases.
    """
    groups = num_heads // num_kv_heads
    rest = wqkv.shape[1:]
    w = wqkv.reshape(num_kv_heads, groups + 2, head_dim, *rest)
    q = w[:, :groups].reshape(num_heads * head_dim, *rest)
    k = w[:, groups].reshape(num_kv_heads * head_dim, *rest)
    v = w[:, groups + 1].reshape(num_kv_heads * head_dim, *rest)
    return q.contiguous(), k.contiguous(), v.contiguous()


def split_vision_qkv(qkv: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """InternViT's fused ``qkv`` (rows q, then k, then v) into three equal parts."""
    q, k, v = qkv.chunk(3, dim=0)
    return q.contiguous(), k.contiguous(), v.contiguous()


# --- config -----------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def image_token_id(src: Path) -> int:
    """Id of ``<IMG_CONTEXT>`` from the source's tokenizer files (else InternVL2-2B's)."""
    for name in ("added_tokens.json", "tokenizer_config.json", "tokenizer.json"):
        f = src / name
        if not f.is_file():
            continue
        data = _read_json(f)
        if name == "added_tokens.json" and IMG_CONTEXT_TOKEN in data:
            return int(data[IMG_CONTEXT_TOKEN])
        if name == "tokenizer_config.json":
            for idx, tok in (data.get("added_tokens_decoder") or {}).items():
                if tok.get("content") == IMG_CONTEXT_TOKEN:
                    return int(idx)
        if name == "tokenizer.json":
            for tok in data.get("added_tokens") or []:
                if tok.get("content") == IMG_CONTEXT_TOKEN:
                    return int(tok["id"])
    return DEFAULT_IMAGE_TOKEN_ID


def native_config(src_config: dict[str, Any], img_token_id: int) -> Any:
    """The ``InternVLConfig`` (Llama language model) of a released InternVL2 ``config.json``."""
    from transformers import InternVLConfig, InternVLVisionConfig, LlamaConfig

    problems = []
    llm, vis = src_config.get("llm_config"), src_config.get("vision_config")
    if not isinstance(llm, dict) or not isinstance(vis, dict):
        raise CheckpointError("config.json has no `llm_config`/`vision_config`: not an InternVL2 (InternVLChatModel) checkpoint")
    arch = (llm.get("architectures") or [""])[0]
    if "InternLM2" not in arch and llm.get("model_type") != "internlm2":
        problems.append(
            f"the language model is {arch or llm.get('model_type')!r}, not InternLM2; this converter handles InternVL2 "
            "models with an InternLM2 language model (InternVL2-2B, -8B, -26B)"
        )
    if src_config.get("ps_version", "v2") != "v2":
        problems.append(
            f"ps_version is {src_config.get('ps_version')!r}; the native pixel shuffle matches 'v2' only"
        )
    if problems:
        raise CheckpointError("cannot convert: " + "; ".join(problems))
    image_size = int(src_config.get("force_image_size") or vis["image_size"])
    patch = int(vis["patch_size"])
    ratio = float(src_config.get("downsample_ratio", 0.5))
    vision = InternVLVisionConfig(
        hidden_size=vis["hidden_size"],
        intermediate_size=vis["intermediate_size"],
        num_attention_heads=vis["num_attention_heads"],
        num_hidden_layers=vis["num_hidden_layers"],
        image_size=[image_size, image_size],
        patch_size=[patch, patch],
        num_channels=vis.get("num_channels", 3),
        attention_bias=bool(vis.get("qkv_bias", True)),
        use_qk_norm=bool(vis.get("qk_normalization", False)),
        norm_type=vis.get("norm_type", "layer_norm"),
        layer_norm_eps=vis.get("layer_norm_eps", 1e-6),
        hidden_act=vis.get("hidden_act", "gelu"),
        use_absolute_position_embeddings=True,
        use_mean_pooling=True,  # InternViT has no final norm: keep the native one an identity
        attention_dropout=vis.get("attention_dropout", 0.0),
        projection_dropout=vis.get("dropout", 0.0),
    )
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(llm.get("rope_theta", 10000.0))}
    scaling = llm.get("rope_scaling")
    if isinstance(scaling, dict) and scaling:
        rope.update({k: v for k, v in scaling.items() if k != "type"})
        rope["rope_type"] = scaling.get("rope_type", scaling.get("type", "default"))
    text = LlamaConfig(
        hidden_size=llm["hidden_size"],
        intermediate_size=llm["intermediate_size"],
        num_attention_heads=llm["num_attention_heads"],
        num_key_value_heads=llm.get("num_key_value_heads", llm["num_attention_heads"]),
        num_hidden_layers=llm["num_hidden_layers"],
        rms_norm_eps=llm.get("rms_norm_eps", 1e-6),
        max_position_embeddings=llm.get("max_position_embeddings", 32768),
        vocab_size=llm["vocab_size"],
        hidden_act=llm.get("hidden_act", "silu"),
        attention_bias=bool(llm.get("bias", False)),
        mlp_bias=False,
        tie_word_embeddings=bool(llm.get("tie_word_embeddings", False)),
        bos_token_id=llm.get("bos_token_id", 1),
        eos_token_id=llm.get("eos_token_id", 2),
        pad_token_id=llm.get("pad_token_id", 2),
        rope_parameters=rope,
    )
    cfg = InternVLConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=img_token_id,
        image_seq_length=int((image_size // patch) ** 2 * ratio * ratio),
        downsample_ratio=ratio,
        projector_hidden_act="gelu",
        vision_feature_layer=int(src_config.get("select_layer", -1)),
        vision_feature_select_strategy="default",
        tie_word_embeddings=bool(llm.get("tie_word_embeddings", False)),
    )
    cfg.architectures = ["InternVLForConditionalGeneration"]
    return cfg


# --- weights ----------------------------------------------------------------------------------
def _source_files(src: Path) -> list[Path]:
    index = src / "model.safetensors.index.json"
    if index.is_file():
        return [src / f for f in sorted(set(_read_json(index)["weight_map"].values()))]
    files = sorted(src.glob("*.safetensors"))
    if files:
        return files
    bins = sorted(src.glob("pytorch_model*.bin"))
    if bins:
        return bins
    raise CheckpointError(f"{src} has no model weights (*.safetensors or pytorch_model*.bin)")


def _iter_tensors(files: list[Path]) -> Any:
    for f in files:
        if f.suffix == ".safetensors":
            with safe_open(str(f), "pt") as sf:
                for key in sf.keys():
                    yield key, sf.get_tensor(key)
        else:
            state = torch.load(str(f), map_location="cpu", weights_only=True)
            yield from state.items()


def convert_state_dict(
    tensors: Any, config: Any, progress: Callable[[Any], Any] | None = None
) -> dict[str, torch.Tensor]:
    """Released-layout tensors ``(key, tensor)`` -> native state dict (fused projections split)."""
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    out: dict[str, torch.Tensor] = {}
    for key, value in progress(tensors) if progress else tensors:
        new = map_key(key)
        if ".self_attn.wqkv." in new:
            parts = split_wqkv(value, text.num_attention_heads, text.num_key_value_heads, head_dim)
            for name, part in zip(("q_proj", "k_proj", "v_proj"), parts):
                out[new.replace(".wqkv.", f".{name}.")] = part
        elif ".attention.qkv." in new:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), split_vision_qkv(value)):
                out[new.replace(".qkv.", f".{name}.")] = part
        else:
            out[new] = value
    return out


def write_image_processor(dst: Path, image_size: int, max_patches: int, min_patches: int) -> None:
    """``preprocessor_config.json`` of InternVL2's tiling: tiles of ``image_size``, thumbnail last."""
    cfg = {
        "image_processor_type": "GotOcr2ImageProcessor",
        "processor_class": "InternVLProcessor",
        "size": {"height": image_size, "width": image_size},
        "crop_to_patches": True,
        "min_patches": min_patches,
        "max_patches": max_patches,
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "do_convert_rgb": True,
    }
    (dst / "preprocessor_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")


def convert_tokenizer(src: Path, dst: Path, img_token_id: int) -> str:
    """Write a tokenizer transformers loads without remote code; returns what was done.

    A ``tokenizer.json`` (fast tokenizer) is copied; InternLM2's SentencePiece ``tokenizer.model``
    is converted to a Llama fast tokenizer (needs ``sentencepiece`` and ``protobuf``) with the
    source's added tokens at their ids. Image tokens and the chat template are set either way.
    """
    from transformers import AutoTokenizer

    specials = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": IMG_CONTEXT_TOKEN}
    # InternVLProcessor (transformers 5.x) reads tokenizer.video_token, and without it the converted processor
    # does not load. InternVL2 has no video token: ``<video>`` joins the tokenizer after the vocabulary (outside
    # the model's embeddings; a text that contains it fails loudly rather than silently)
    specials["video_token"] = "<video>"
    if (src / "tokenizer.json").is_file():
        for name in ("tokenizer.json", "special_tokens_map.json"):
            if (src / name).is_file():
                shutil.copy2(src / name, dst / name)
        cfg = _read_json(src / "tokenizer_config.json") if (src / "tokenizer_config.json").is_file() else {}
        cfg.pop("auto_map", None)
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg["extra_special_tokens"] = specials
        (dst / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        tok = AutoTokenizer.from_pretrained(dst)
        how = "copied tokenizer.json"
    elif (src / "tokenizer.model").is_file():
        cfg = _read_json(src / "tokenizer_config.json") if (src / "tokenizer_config.json").is_file() else {}
        shutil.copy2(src / "tokenizer.model", dst / "tokenizer.model")
        base = {
            "tokenizer_class": "LlamaTokenizer",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": cfg.get("pad_token") or "</s>",
            "add_bos_token": True,  # InternLM2's tokenizer starts every text with <s>
            "add_eos_token": False,
            "legacy": False,
        }
        (dst / "tokenizer_config.json").write_text(json.dumps(base, indent=2), encoding="utf-8")
        try:
            tok = AutoTokenizer.from_pretrained(dst)
        except (ImportError, ValueError, OSError) as exc:
            raise CheckpointError(
                f"cannot convert {src / 'tokenizer.model'} ({exc}); install `sentencepiece` and `protobuf` "
                "(`pip install gswa-plugin[convert]`), or pass --no-tokenizer and provide a tokenizer yourself"
            ) from exc
        added = sorted(
            ((int(i), t["content"]) for i, t in (cfg.get("added_tokens_decoder") or {}).items()), key=lambda x: x[0]
        )
        tok = _as_internlm2_splits(tok, src / "tokenizer.model", added, dst)
        for idx, content in added:
            if content in tok.get_vocab():
                if tok.convert_tokens_to_ids(content) != idx:
                    raise CheckpointError(
                        f"added token {content!r} has id {idx} in the source but {tok.convert_tokens_to_ids(content)} "
                        "in the converted tokenizer; the tokenizer cannot be rebuilt id for id"
                    )
                continue
            if idx != len(tok):
                raise CheckpointError(
                    f"added token {content!r} has id {idx} in the source but would get {len(tok)}; the tokenizer "
                    "cannot be rebuilt id for id"
                )
            tok.add_tokens([content], special_tokens=True)
        _check_against_sentencepiece(src / "tokenizer.model", tok)
        how = "converted tokenizer.model"
    else:
        raise CheckpointError(f"{src} has no tokenizer (tokenizer.json or tokenizer.model); pass --no-tokenizer")
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(dst)
    cfg = _read_json(dst / "tokenizer_config.json")
    cfg["extra_special_tokens"] = specials
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    got = AutoTokenizer.from_pretrained(dst).convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    if got != img_token_id:
        raise CheckpointError(
            f"the converted tokenizer maps {IMG_CONTEXT_TOKEN} to {got}, the config expects {img_token_id}"
        )
    return how


def _as_internlm2_splits(tok: Any, model_file: Path, added: list[tuple[int, str]], dst: Path) -> Any:
    """Make the fast tokenizer cut text as InternLM2's own (slow) tokenizer does.

    That tokenizer splits the text at its added tokens and encodes each piece with SentencePiece,
    so the piece after ``<|im_start|>`` gets SentencePiece's dummy ``▁`` prefix again when the
    model adds one, and never when it does not. The chat markers sit inside the SentencePiece
    vocabulary under other names (``[UNUSED_TOKEN_145]`` at 92542 is ``<|im_end|>`` in
    InternVL2-2B's ``tokenizer_config.json``), so those pieces are renamed in place, keeping
    their ids, and marked special.
    """
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers, processors

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    state = json.loads(tok.backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    by_id = {i: piece for piece, i in vocab.items()}
    renamed = {idx: content for idx, content in added if idx in by_id and by_id[idx] != content}
    for idx, content in renamed.items():
        if content in vocab:
            raise CheckpointError(
                f"added token {content!r} (id {idx}) is also SentencePiece piece {vocab[content]}; the tokenizer "
                "cannot be rebuilt id for id"
            )
        del vocab[by_id[idx]]
        vocab[content] = idx
    for entry in state.get("added_tokens") or []:
        if entry["id"] in renamed:
            entry["content"], entry["special"] = renamed[entry["id"]], True
    backend = Tokenizer.from_str(json.dumps(state))
    rules = [normalizers.Replace(" ", "▁")]
    if proto.normalizer_spec.add_dummy_prefix:
        rules.insert(0, normalizers.Prepend("▁"))  # runs on every piece between added tokens
    backend.normalizer = normalizers.Sequence(rules)
    backend.pre_tokenizer = pre_tokenizers.Sequence([])
    backend.add_special_tokens([AddedToken(c, special=True, normalized=False) for _, c in added if c in vocab])
    bos = tok.bos_token
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.bos_token_id)]
    )
    backend.save(str(dst / "tokenizer.json"))
    # the generic fast class keeps tokenizer.json's normaliser; LlamaTokenizer would put its own back
    cfg = _read_json(dst / "tokenizer_config.json")
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(dst)


def _check_against_sentencepiece(model_file: Path, tok: Any) -> None:
    """The converted tokenizer must cut text exactly as the SentencePiece model does."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    for text in ("What is in the image?", "Describe this photo in detail.", "OCR: 12 apples, 3.5 kg"):
        want = sp.encode(text)
        got = tok(text, add_special_tokens=False)["input_ids"]
        if got != want:
            raise CheckpointError(
                f"the converted tokenizer cuts {text!r} into {got[:12]}, SentencePiece into {want[:12]}; "
                "report this with the checkpoint's tokenizer files"
            )


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    dtype: torch.dtype | None = None,
    tokenizer: bool = True,
    max_patches: int | None = None,
) -> dict[str, Any]:
    """Convert an InternVL2 checkpoint directory (released layout) into ``dst`` (native layout).

    Args:
        src: directory with ``config.json`` (``InternVLChatModel``) and the weights.
        dst: output directory; ``InternVLForConditionalGeneration.from_pretrained(dst)`` loads it.
        dtype: dtype of the written weights (default: as stored).
        tokenizer: also write the tokenizer (see
            [`convert_tokenizer`][gswa_plugin.tools.convert_internvl2.convert_tokenizer]).
        max_patches: tiles per image of the written image processor (default: the source's
            ``max_dynamic_patch``, 12 for InternVL2).

    Returns:
        A summary: number of source and written tensors, the config's key sizes, tokenizer action.

    Raises:
        CheckpointError: the source is not an InternVL2 checkpoint in the released layout, a key
            does not map, or the converted weights do not fit the native class exactly.
    """
    from transformers import InternVLForConditionalGeneration

    src, dst = Path(src), Path(dst)
    if not (src / "config.json").is_file():
        raise CheckpointError(f"{src} has no config.json; give the directory of an InternVL2 checkpoint")
    src_cfg = _read_json(src / "config.json")
    tok_id = image_token_id(src)
    config = native_config(src_cfg, tok_id)
    files = _source_files(src)
    n_src = 0

    def counted(it: Any) -> Any:
        nonlocal n_src
        for item in tqdm(it, desc="converting tensors", unit=" tensors", disable=None):
            n_src += 1
            yield item

    state = convert_state_dict(_iter_tensors(files), config, progress=counted)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"the converted weights do not fit InternVLForConditionalGeneration: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}"
        )
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [f"{k}: {tuple(state[k].shape)} vs {shapes[k]}" for k in shapes if tuple(state[k].shape) != shapes[k]]
    if wrong:
        raise CheckpointError(f"converted tensors have the wrong shape: {wrong[:8]}")
    model.load_state_dict(state, strict=True, assign=True)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    vis = src_cfg["vision_config"]
    write_image_processor(
        dst,
        int(src_cfg.get("force_image_size") or vis["image_size"]),
        int(max_patches or src_cfg.get("max_dynamic_patch", 12)),
        int(src_cfg.get("min_dynamic_patch", 1)),
    )
    (dst / "processor_config.json").write_text(
        json.dumps({"processor_class": "InternVLProcessor", "image_seq_length": config.image_seq_length}, indent=2),
        encoding="utf-8",
    )
    tok_action = convert_tokenizer(src, dst, tok_id) if tokenizer else "skipped"
    return {
        "source_tensors": n_src,
        "written_tensors": len(state),
        "language_model": f"Llama, {config.text_config.num_hidden_layers} layers, hidden {config.text_config.hidden_size}",
        "vision_model": f"InternViT, {config.vision_config.num_hidden_layers} layers, hidden {config.vision_config.hidden_size}",
        "image_token_id": tok_id,
        "tokenizer": tok_action,
    }
