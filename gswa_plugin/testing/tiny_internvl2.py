"""A tiny InternVL2 checkpoint in the released (remote-code) layout, built in code, offline.

The layout of ``OpenGVLab/InternVL2-2B`` as ``gswa convert-internvl2`` reads it: ``config.json``
of ``InternVLChatModel`` (InternViT + ``mlp1`` + InternLM2 with a fused ``wqkv``), weights under
its state-dict names, and a tokenizer. The weights are random and the sizes tiny; nothing of the
released model's code is needed or included. Used by the converter's tests and by the recipes'
end-to-end run (``recipes/internvl2-2b/e2e.py``), which converts it as the README converts the
real checkpoint::

    python -m gswa_plugin.testing.tiny_internvl2 /tmp/models/InternVL2-2B

The tokenizer is the tiny word-level one with InternLM2's chat markers (``<|im_start|>``,
``<|im_end|>``) added as special tokens, so the converted ``internlm2-chat`` template encodes
them as single tokens; the language model's vocabulary is sized to it. (InternLM2's real
SentencePiece layout is covered by the converter's own tests.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from gswa_plugin.testing.tiny import SPECIAL_TOKENS, tiny_tokenizer

#: tiny sizes in the released InternVL2 layout (InternViT + mlp1 + InternLM2 with GQA)
VD, VI, VL, VH, IMG, PATCH = 32, 64, 2, 2, 56, 14
TD, TI, TL, TH, TK = 64, 128, 2, 4, 2
HEAD = TD // TH
VOCAB = len(SPECIAL_TOKENS) + 40


def released_state(seed: int = 0, vocab: int = VOCAB) -> dict[str, torch.Tensor]:
    """Random tensors under the key names and shapes of InternVLChatModel's state dict."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    s: dict[str, torch.Tensor] = {}
    n = (IMG // PATCH) ** 2
    s["vision_model.embeddings.class_embedding"] = r(1, 1, VD)
    s["vision_model.embeddings.patch_embedding.weight"] = r(VD, 3, PATCH, PATCH)
    s["vision_model.embeddings.patch_embedding.bias"] = r(VD)
    s["vision_model.embeddings.position_embedding"] = r(1, n + 1, VD)
    for i in range(VL):
        p = f"vision_model.encoder.layers.{i}."
        s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"] = r(3 * VD, VD), r(3 * VD)
        s[p + "attn.proj.weight"], s[p + "attn.proj.bias"] = r(VD, VD), r(VD)
        s[p + "ls1"], s[p + "ls2"] = r(VD), r(VD)
        for norm in ("norm1", "norm2"):
            s[p + norm + ".weight"], s[p + norm + ".bias"] = 1 + r(VD), r(VD)
        s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"] = r(VI, VD), r(VI)
        s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"] = r(VD, VI), r(VD)
    s["mlp1.0.weight"], s["mlp1.0.bias"] = 1 + r(4 * VD), r(4 * VD)
    s["mlp1.1.weight"], s["mlp1.1.bias"] = r(TD, 4 * VD), r(TD)
    s["mlp1.3.weight"], s["mlp1.3.bias"] = r(TD, TD), r(TD)
    s["language_model.model.tok_embeddings.weight"] = r(vocab, TD)
    for i in range(TL):
        p = f"language_model.model.layers.{i}."
        s[p + "attention.wqkv.weight"] = r((TH + 2 * TK) * HEAD, TD)
        s[p + "attention.wo.weight"] = r(TD, TD)
        s[p + "feed_forward.w1.weight"], s[p + "feed_forward.w3.weight"] = r(TI, TD), r(TI, TD)
        s[p + "feed_forward.w2.weight"] = r(TD, TI)
        s[p + "attention_norm.weight"], s[p + "ffn_norm.weight"] = 1 + r(TD), 1 + r(TD)
    s["language_model.model.norm.weight"] = 1 + r(TD)
    s["language_model.output.weight"] = r(vocab, TD)
    return s


def released_config(vocab: int = VOCAB) -> dict:
    return {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "downsample_ratio": 0.5,
        "select_layer": -1,
        "ps_version": "v2",
        "template": "internlm2-chat",
        "force_image_size": IMG,
        "max_dynamic_patch": 6,
        "min_dynamic_patch": 1,
        "use_thumbnail": True,
        "llm_config": {
            "architectures": ["InternLM2ForCausalLM"],
            "model_type": "internlm2",
            "hidden_size": TD,
            "intermediate_size": TI,
            "num_attention_heads": TH,
            "num_key_value_heads": TK,
            "num_hidden_layers": TL,
            "rms_norm_eps": 1e-5,
            "rope_theta": 1000000,
            "max_position_embeddings": 4096,
            "vocab_size": vocab,
            "bias": False,
            "tie_word_embeddings": False,
            "hidden_act": "silu",
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
        },
        "vision_config": {
            "architectures": ["InternVisionModel"],
            "hidden_size": VD,
            "intermediate_size": VI,
            "num_attention_heads": VH,
            "num_hidden_layers": VL,
            "image_size": IMG,
            "patch_size": PATCH,
            "qkv_bias": True,
            "qk_normalization": False,
            "norm_type": "layer_norm",
            "layer_norm_eps": 1e-6,
            "hidden_act": "gelu",
            "drop_path_rate": 0.0,
        },
    }


#: InternLM2's chat markers, added to the tiny tokenizer as special tokens.
CHAT_MARKERS = ("<|im_start|>", "<|im_end|>")


def released_tokenizer():
    """The tiny word-level tokenizer with InternLM2's chat markers as special tokens."""
    tok = tiny_tokenizer()
    taken = set(tok.get_vocab().values())
    if len(tok) in taken:
        # the tiny vocabulary lists one word twice, so its highest id equals its size and the next added
        # token would share that id: a filler takes it, and the markers get ids of their own
        tok.add_tokens(["<|unused|>"], special_tokens=True)
    tok.add_tokens(list(CHAT_MARKERS), special_tokens=True)
    ids = [tok.convert_tokens_to_ids(t) for t in CHAT_MARKERS]
    assert len(set(ids)) == len(ids) and not taken & set(ids), "chat markers must not share an id"
    return tok


def write_released(directory: str | Path, seed: int = 0) -> Path:
    """Write the tiny released-layout checkpoint (config, ``model.safetensors``, tokenizer) to ``directory``."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tok = released_tokenizer()
    vocab = len(tok)
    (out / "config.json").write_text(json.dumps(released_config(vocab), indent=2), encoding="utf-8")
    save_file(released_state(seed, vocab), str(out / "model.safetensors"))
    tok.save_pretrained(out)
    return out


if __name__ == "__main__":
    print(write_released(sys.argv[1] if len(sys.argv) > 1 else "InternVL2-2B-tiny"))
