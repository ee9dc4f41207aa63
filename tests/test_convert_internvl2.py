"""InternVL2 (released layout) -> native transformers InternVL: keys, strict loading, numerics."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from safetensors.torch import save_file

from gswa_plugin.errors import CheckpointError
from gswa_plugin.testing.tiny import SPECIAL_TOKENS, tiny_tokenizer
from gswa_plugin.testing.tiny_internvl2 import HEAD, TD, TH, TK, TL, released_config, released_state
from gswa_plugin.tools.convert_internvl2 import convert, map_key, split_wqkv


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A tiny InternVL2 checkpoint directory in the released layout (config, weights, tokenizer)."""
    d = tmp_path_factory.mktemp("internvl2_released")
    (d / "config.json").write_text(json.dumps(released_config()), encoding="utf-8")
    save_file(released_state(), str(d / "model.safetensors"))
    tiny_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def converted(released, tmp_path_factory):
    dst = tmp_path_factory.mktemp("internvl2_native")
    summary = convert(released, dst)
    return dst, summary


def test_every_key_maps_and_the_native_class_loads_strictly(released, converted):
    from transformers import InternVLForConditionalGeneration

    dst, summary = converted
    assert summary["source_tensors"] == len(released_state())
    assert summary["image_token_id"] == SPECIAL_TOKENS.index("<IMG_CONTEXT>")
    model, info = InternVLForConditionalGeneration.from_pretrained(dst, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    assert summary["written_tensors"] == len(model.state_dict())
    assert model.config.text_config.model_type == "llama"
    assert model.config.image_seq_length == 4


def test_untouched_tensors_are_copied_exactly(converted):
    from transformers import InternVLForConditionalGeneration

    dst, _ = converted
    src = released_state()
    sd = InternVLForConditionalGeneration.from_pretrained(dst).state_dict()
    pairs = {
        "vision_model.embeddings.class_embedding": "model.vision_tower.embeddings.cls_token",
        "vision_model.encoder.layers.1.ls2": "model.vision_tower.encoder.layer.1.lambda_2",
        "vision_model.encoder.layers.0.norm1.weight": "model.vision_tower.encoder.layer.0.layernorm_before.weight",
        "mlp1.0.weight": "model.multi_modal_projector.layer_norm.weight",
        "mlp1.3.bias": "model.multi_modal_projector.linear_2.bias",
        "language_model.model.layers.1.feed_forward.w3.weight": "model.language_model.layers.1.mlp.up_proj.weight",
        "language_model.output.weight": "lm_head.weight",
    }
    for old, new in pairs.items():
        assert map_key(old) == new
        torch.testing.assert_close(sd[new], src[old], rtol=0, atol=0)
    q, k, v = src["vision_model.encoder.layers.0.attn.qkv.weight"].chunk(3)
    torch.testing.assert_close(sd["model.vision_tower.encoder.layer.0.attention.k_proj.weight"], k, rtol=0, atol=0)


def test_wqkv_split_matches_the_fused_projection():
    """InternLM2 computes q, k, v with one matmul, then regroups per kv head; the split weights
    give the same per-head vectors with three separate matmuls."""
    g = torch.Generator().manual_seed(1)
    wqkv = torch.randn((TH + 2 * TK) * HEAD, TD, generator=g)
    x = torch.randn(2, 5, TD, generator=g)
    groups = TH // TK
    fused = (x @ wqkv.T).view(2, 5, TK, groups + 2, HEAD)
    q_ref = fused[..., :groups, :].reshape(2, 5, TH, HEAD)
    k_ref, v_ref = fused[..., -2, :], fused[..., -1, :]
    q_w, k_w, v_w = split_wqkv(wqkv, TH, TK, HEAD)
    torch.testing.assert_close((x @ q_w.T).view(2, 5, TH, HEAD), q_ref)
    torch.testing.assert_close((x @ k_w.T).view(2, 5, TK, HEAD), k_ref)
    torch.testing.assert_close((x @ v_w.T).view(2, 5, TK, HEAD), v_ref)


def _internlm2_attention_reference(x, wqkv, wo, theta):
    """InternLM2's attention with the fused wqkv, written from its definition (stands in for the
    remote-code ``InternLM2Attention``, which cannot be loaded here): per-kv-head regrouping,
    rotary embedding by halves, causal softmax, GQA by repeating each kv head."""
    b, n, _ = x.shape
    groups = TH // TK
    qkv = (x @ wqkv.T).view(b, n, TK, groups + 2, HEAD)
    q = qkv[..., :groups, :].reshape(b, n, TH, HEAD).transpose(1, 2)
    k = qkv[..., -2, :].transpose(1, 2)
    v = qkv[..., -1, :].transpose(1, 2)
    inv = 1.0 / theta ** (torch.arange(0, HEAD, 2).float() / HEAD)
    freqs = torch.arange(n).float()[:, None] * inv[None]
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos(), emb.sin()

    def rot(t):
        return torch.cat([-t[..., HEAD // 2:], t[..., : HEAD // 2]], dim=-1)

    q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(HEAD)
    scores = scores.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, TH * HEAD)
    return out @ wo.T


def test_converted_attention_equals_the_fused_computation(converted):
    from transformers import InternVLForConditionalGeneration

    dst, _ = converted
    model = InternVLForConditionalGeneration.from_pretrained(dst, attn_implementation="eager").eval()
    src = released_state()
    lm = model.model.language_model
    x = torch.randn(1, 7, TD, generator=torch.Generator().manual_seed(2))
    pos = torch.arange(7)[None]
    mask = torch.full((7, 7), float("-inf")).triu(1)[None, None]
    with torch.no_grad():
        cos_sin = lm.rotary_emb(x, pos)
        for i in range(TL):
            ours, _ = lm.layers[i].self_attn(hidden_states=x, position_embeddings=cos_sin, attention_mask=mask)
            ref = _internlm2_attention_reference(
                x,
                src[f"language_model.model.layers.{i}.attention.wqkv.weight"],
                src[f"language_model.model.layers.{i}.attention.wo.weight"],
                1000000.0,
            )
            torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_converted_model_runs_with_gswa_on_a_real_photograph(converted):
    from transformers import InternVLForConditionalGeneration

    import gswa_plugin
    from gswa_plugin.hf import load_processor
    from gswa_plugin.testing.tiny import sample_image

    dst, _ = converted
    processor = load_processor(dst)
    assert processor.image_processor.max_patches == 6
    model = InternVLForConditionalGeneration.from_pretrained(dst, attn_implementation="eager").eval()
    inputs = processor(text=["<IMG_CONTEXT> describe the image"], images=[sample_image("coffee")], return_tensors="pt")
    with torch.no_grad():
        plain = model(**inputs).logits
        gswa_plugin.enable(model, {"hidden_size": 32, "num_heads": 2})
        weighted = model(**inputs).logits
    torch.testing.assert_close(weighted, plain, rtol=0, atol=0)  # identity at start
    assert len(gswa_plugin.last_weights(model)[0]) > 1


def _drop_bias(state):
    del state["mlp1.1.bias"]


def _add_stray(state):
    state["some_extra_head.weight"] = torch.zeros(2)


@pytest.mark.parametrize(
    "edit, named",
    [(_add_stray, "some_extra_head.weight"), (_drop_bias, "multi_modal_projector.linear_1.bias")],
    ids=["stray key", "missing tensor"],
)
def test_a_key_that_does_not_fit_is_named(tmp_path, edit, named):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(released_config()), encoding="utf-8")
    state = released_state()
    edit(state)
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=re.escape(named)):
        convert(d, tmp_path / "out", tokenizer=False)


def test_not_internlm2_is_refused(tmp_path):
    d = tmp_path / "qwen"
    d.mkdir()
    cfg = released_config()
    cfg["llm_config"]["architectures"] = ["Qwen2ForCausalLM"]
    cfg["llm_config"]["model_type"] = "qwen2"
    (d / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    save_file(released_state(), str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="not InternLM2"):
        convert(d, tmp_path / "out")


def _released_with_sentencepiece(spm, src, **options) -> bytes:
    """Write a released-layout checkpoint to ``src`` and return a SentencePiece BPE model (320
    pieces, byte fallback) trained on the tiny vocabulary's words; ``options`` go to the trainer."""
    import io

    from gswa_plugin.testing.tiny import WORDS

    src.mkdir()
    (src / "config.json").write_text(json.dumps(released_config()), encoding="utf-8")
    save_file(released_state(), str(src / "model.safetensors"))
    buf = io.BytesIO()
    sentences = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 5
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=buf, vocab_size=320, model_type="bpe", byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, minloglevel=2, **options,
    )
    return buf.getvalue()


def test_sentencepiece_tokenizer_is_converted_id_for_id(tmp_path):
    spm = pytest.importorskip("sentencepiece", reason="InternLM2's tokenizer.model needs the `convert` extra")
    from transformers import AutoTokenizer

    src = tmp_path / "spm_src"
    (src / "tokenizer.model").write_bytes(_released_with_sentencepiece(spm, src))
    added = ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"]
    (src / "tokenizer_config.json").write_text(json.dumps({
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "tokenizer_class": "InternLM2Tokenizer",
        "added_tokens_decoder": {str(320 + i): {"content": t, "special": True} for i, t in enumerate(added)},
    }), encoding="utf-8")
    dst = tmp_path / "spm_dst"
    summary = convert(src, dst)
    assert summary["tokenizer"] == "converted tokenizer.model"
    assert summary["image_token_id"] == 324
    tok = AutoTokenizer.from_pretrained(dst)  # no remote code
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    text = "describe the picture of a red cat"
    assert tok(text)["input_ids"] == [1] + sp.encode(text)
    assert tok.convert_tokens_to_ids("<IMG_CONTEXT>") == 324
    assert "<|im_start|>user" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


# --- InternLM2's tokenizer layout: chat markers inside the SentencePiece vocabulary ----------------
def _internlm2_layout(root, add_dummy_prefix: bool):
    """A released-layout checkpoint whose tokenizer.model is laid out as InternLM2's: the last two
    SentencePiece pieces are user-defined placeholders ([UNUSED_TOKEN_145], [UNUSED_TOKEN_146]) that
    tokenizer_config.json names <|im_end|> and <|im_start|> (92542/92543 in InternVL2-2B), then
    <img>, </img>, <IMG_CONTEXT> added after the vocabulary. Identity normalisation, byte fallback."""
    spm = pytest.importorskip("sentencepiece", reason="InternLM2's tokenizer.model needs the `convert` extra")
    from sentencepiece import sentencepiece_model_pb2 as pb

    src = root / "src"
    model = _released_with_sentencepiece(
        spm, src, normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=add_dummy_prefix
    )
    proto = pb.ModelProto()
    proto.ParseFromString(model)
    for name in ("[UNUSED_TOKEN_145]", "[UNUSED_TOKEN_146]"):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = name, 0.0, pb.ModelProto.SentencePiece.USER_DEFINED
    (src / "tokenizer.model").write_bytes(proto.SerializeToString())
    n = len(proto.pieces)
    added = {"<|im_end|>": n - 2, "<|im_start|>": n - 1, "<img>": n, "</img>": n + 1, "<IMG_CONTEXT>": n + 2}
    (src / "tokenizer_config.json").write_text(json.dumps({
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "tokenizer_class": "InternLM2Tokenizer",
        "added_tokens_decoder": {str(i): {"content": t, "special": True} for t, i in added.items()},
    }), encoding="utf-8")
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    return src, sp, added


def _internlm2_reference(sp, added: dict[str, int], text: str) -> list[int]:
    """What InternLM2's own tokenizer (a slow PreTrainedTokenizer) gives: <s>, then the text split at
    its added tokens, each piece encoded by SentencePiece on its own."""
    pattern = "(" + "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)) + ")"
    ids = [sp.bos_id()]
    for piece in re.split(pattern, text):
        if piece in added:
            ids.append(added[piece])
        elif piece:
            ids += sp.encode(piece)
    return ids


CHAT_TEXTS = [
    "<|im_start|>system\nyou are a helpful assistant<|im_end|><|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\n"
    "what is in the image ?<|im_end|><|im_start|>assistant\na red cat<|im_end|><|im_start|>user\n and  the colour ?"
    "<|im_end|><|im_start|>assistant\n red\n<|im_end|>",
    " leading space then <|im_end|><|im_end|>two markers and 书生 (byte fallback)\n\n",
    "<|im_start|>assistant\n",
]


@pytest.mark.parametrize("add_dummy_prefix", [True, False], ids=["dummy-prefix", "no-dummy-prefix"])
def test_internlm2_layout_converts_token_for_token_on_chat_text(tmp_path, add_dummy_prefix):
    from transformers import AutoTokenizer

    src, sp, added = _internlm2_layout(tmp_path, add_dummy_prefix)
    convert(src, tmp_path / "dst")
    tok = AutoTokenizer.from_pretrained(tmp_path / "dst")
    for token, idx in added.items():
        assert tok.convert_tokens_to_ids(token) == idx, token
    for text in CHAT_TEXTS:
        assert tok(text)["input_ids"] == _internlm2_reference(sp, added, text), text


def test_training_text_matches_internvl_preprocessing_token_for_token(tmp_path, photos):
    """The transformers trainer's encoding of a two-turn record on the converted tokenizer equals
    InternVL's: the internlm2-chat string (system prompt, no newline after <|im_end|>, stripped
    text, <image> -> <img> + <IMG_CONTEXT> x tokens + </img>) tokenized by InternLM2's tokenizer,
    with labels on each answer and its <|im_end|> only."""
    from gswa_plugin.hf import load_processor
    from gswa_plugin.integrations.transformers.data import IGNORE_INDEX, ConversationDataset
    from gswa_plugin.tools.convert_internvl2 import SYSTEM_PROMPT

    # without SentencePiece's dummy prefix: with one, preprocess_internlm's piece-by-piece counts run one
    # token past this sequence (InternVL would drop the sample), so this is the layout its mask assumes
    src, sp, added = _internlm2_layout(tmp_path, False)
    convert(src, tmp_path / "dst")
    processor = load_processor(str(tmp_path / "dst"))
    photos[0].save(tmp_path / "a.png")
    record = {"image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nwhat is in the image ? "},
        {"from": "gpt", "value": " a red cat\n"},
        {"from": "human", "value": "and the colour ?"},
        {"from": "gpt", "value": "red"},
    ]}
    (tmp_path / "d.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    ds = ConversationDataset([tmp_path / "d.jsonl"], processor, template="internlm2", system_prompt=SYSTEM_PROMPT)
    item = ds[0]
    tiles = item["pixel_values"].shape[0]
    image = "<img>" + "<IMG_CONTEXT>" * (tiles * processor.image_seq_length) + "</img>"
    official = (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|><|im_start|>user\n{image}\nwhat is in the image ?<|im_end|>"
        "<|im_start|>assistant\na red cat<|im_end|><|im_start|>user\nand the colour ?<|im_end|>"
        "<|im_start|>assistant\nred<|im_end|>"
    )
    want = _internlm2_reference(sp, added, official)
    assert item["input_ids"].tolist() == want
    assert item["labels"].tolist() == _preprocess_internlm_labels(want, official, lambda t: _internlm2_reference(sp, added, t))
    trained = item["input_ids"][item["labels"] != IGNORE_INDEX].tolist()
    assert trained.count(added["<|im_end|>"]) == 2 and added["<|im_start|>"] not in trained


def _preprocess_internlm_labels(ids: list[int], conversation: str, encode) -> list[int]:
    """InternVL's label mask for internlm2-chat (dataset.py, preprocess_internlm), from token counts
    of the conversation's pieces: <s>, everything up to each `<|im_start|>assistant\n` and each user
    turn are masked; each answer and its <|im_end|> are targets."""
    user, assistant, ignore = "<|im_start|>user\n", "<|im_start|>assistant\n", -100
    target = list(ids)
    target[:1] = [ignore]
    cur = 1
    parts = conversation.split(assistant)
    n = len(encode(parts[0] + assistant)) - 1
    target[cur : cur + n] = [ignore] * n
    cur += n
    for part in parts[1:-1]:
        answer, question = part.split(user)
        cur += len(encode(answer)) - 1
        n = len(encode(user + question + assistant)) - 1
        target[cur : cur + n] = [ignore] * n
        cur += n
    cur += len(encode(parts[-1])) - 1
    target[cur:] = [ignore] * (len(target) - cur)
    assert cur == len(ids), "the official mask would drop this sample (tokenization mismatch)"
    return target
