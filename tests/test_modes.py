"""Application modes (`embed`, `value`, `attn_bias`) on the tiny real InternVL with the real processor.

Checks look at what the language model's attention actually receives: the value projection's
output and the attention mask handed to the attention kernel.
"""

from __future__ import annotations

import pytest
import torch

import gswa_plugin
from gswa_plugin import ConfigError
from gswa_plugin.adapters.internvl import InternVLAdapter
from gswa_plugin.apply import current_position_weights, placeholder_position_weights
from gswa_plugin.errors import UnsupportedModeError
from gswa_plugin.hookspecs import hookimpl
from gswa_plugin.plugins import register_plugin

SMALL = {"hidden_size": 32, "num_heads": 4}


def peaked(model, seed: int = 3):
    """Give the enabled GSWA random (non-identity) parameters, so weights are non-uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.gswa.parameters():
            p.add_(torch.randn(p.shape, generator=g))


def set_attn(model, impl: str) -> None:
    model.config._attn_implementation = impl
    model.model.language_model.config._attn_implementation = impl


def capture(model, inputs, layer: int = 0):
    """Layer ``layer``'s value-projection output and the attention mask its kernel receives."""
    seen = {}
    attn = model.model.language_model.layers[layer].self_attn

    def v_hook(module, args, out):
        seen["v"] = out.detach().clone()

    def a_hook(module, args, kwargs):
        m = kwargs.get("attention_mask")
        seen["mask"] = None if m is None else m.detach().clone()

    hs = [attn.v_proj.register_forward_hook(v_hook), attn.register_forward_pre_hook(a_hook, with_kwargs=True)]
    try:
        with torch.no_grad():
            logits = model(**inputs).logits
    finally:
        for h in hs:
            h.remove()
    return seen, logits


def generate(model, inputs, use_cache: bool = True):
    with torch.no_grad():
        return model.generate(
            **inputs,
            max_new_tokens=3,
            do_sample=False,
            use_cache=use_cache,
            output_logits=True,
            return_dict_in_generate=True,
        )


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("mode", ["value", "attn_bias"])
def test_untrained_mode_is_identity(internvl_model, internvl_inputs, mode, impl):
    set_attn(internvl_model, impl)
    with torch.no_grad():
        base = internvl_model(**internvl_inputs).logits
    gen0 = generate(internvl_model, internvl_inputs)
    gswa_plugin.enable(internvl_model, {**SMALL, "mode": mode})
    with torch.no_grad():
        out = internvl_model(**internvl_inputs).logits
    gen1 = generate(internvl_model, internvl_inputs)
    assert torch.equal(out, base)  # weights exactly 1: the host's own kernel, bit for bit
    assert torch.equal(gen0.sequences, gen1.sequences)


def test_value_mode_scales_each_tiles_values_by_its_weight(internvl_model, internvl_inputs):
    plain, _ = capture(internvl_model, internvl_inputs)
    handle = gswa_plugin.enable(internvl_model, {**SMALL, "mode": "value"})
    peaked(internvl_model)
    seen, _ = capture(internvl_model, internvl_inputs)
    view_w = handle.last_batch.weights
    assert not torch.allclose(view_w, torch.ones_like(view_w))
    ids = internvl_inputs["input_ids"]
    pos_w = placeholder_position_weights(ids, internvl_model.config.image_token_id, view_w, 4)
    # the language model's input is unchanged in this mode, so layer 0's values are exactly w * v
    torch.testing.assert_close(seen["v"], plain["v"] * pos_w[..., None], rtol=1e-6, atol=1e-6)
    text = ids != internvl_model.config.image_token_id
    assert torch.equal(seen["v"][text], plain["v"][text])
    # the embeddings are not scaled in this mode (no double weighting)
    assert torch.equal(current_position_weights(handle), pos_w)


def test_attn_bias_adds_log_w_to_the_keys_of_each_tile(internvl_model, internvl_inputs):
    """The dense path (``eager``): the additive mask the kernel receives holds log(w) on the keys."""
    impl = "eager"
    set_attn(internvl_model, impl)
    plain, _ = capture(internvl_model, internvl_inputs)
    handle = gswa_plugin.enable(internvl_model, {**SMALL, "mode": "attn_bias"})
    peaked(internvl_model)
    seen, _ = capture(internvl_model, internvl_inputs)
    ids = internvl_inputs["input_ids"]
    pos_w = placeholder_position_weights(ids, internvl_model.config.image_token_id, handle.last_batch.weights, 4)
    mask = seen["mask"]
    assert mask.dtype.is_floating_point and mask.shape[-1] == ids.shape[1]
    base = plain["mask"]
    if base is None or base.dtype == torch.bool:  # SDPA: boolean or implicit causal mask
        q = torch.arange(ids.shape[1])
        allowed = (q[None, :] <= q[:, None])[None, None] if base is None else base
    else:
        allowed = base > torch.finfo(base.dtype).min / 2
    allowed = allowed.expand_as(mask)
    expected = torch.log(pos_w)[:, None, None, :].expand_as(mask)
    if base is not None and base.dtype != torch.bool:
        expected = expected + base
    torch.testing.assert_close(mask[allowed], expected[allowed])
    assert bool((mask[~allowed] < -1e30).all())


class _Spy:
    """Stands in for transformers' ``sdpa`` attention function (then calls the real one) to record
    what the kernel receives in layer 0."""

    def __init__(self):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        self.mapping = ALL_ATTENTION_FUNCTIONS._global_mapping
        self.real = self.mapping["sdpa"]
        self.calls = []

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        if getattr(module, "layer_idx", None) == 0 and hasattr(module, "num_key_value_groups"):
            self.calls.append((query.detach().clone(), key.detach().clone(), value.shape, attention_mask, kwargs))
        return self.real(module, query, key, value, attention_mask, **kwargs)

    def __enter__(self):
        self.mapping["sdpa"] = self
        return self

    def __exit__(self, *exc):
        self.mapping["sdpa"] = self.real


def test_attn_bias_fast_path_keeps_the_hosts_mask_and_adds_log_w(internvl_model, internvl_inputs):
    """SDPA: the kernel receives the host's own mask (so the implicit causal mask and GQA stay),
    the host's queries and keys plus the bias dimensions (one in float32 on a CPU; see
    ``_bias_head_dim``), and ``scale`` such that every logit gets exactly + log(w) of its key."""
    from gswa_plugin.apply import _bias_head_dim

    set_attn(internvl_model, "sdpa")
    with _Spy() as plain, torch.no_grad():
        internvl_model(**internvl_inputs)
    handle = gswa_plugin.enable(internvl_model, {**SMALL, "mode": "attn_bias"})
    peaked(internvl_model)
    with _Spy() as spy, torch.no_grad():
        internvl_model(**internvl_inputs)
    (q0, k0, _, m0, _), (q1, k1, v1_shape, m1, kw1) = plain.calls[0], spy.calls[0]
    d = q0.shape[-1]
    assert q1.shape[-1] == k1.shape[-1] == v1_shape[-1] == _bias_head_dim(d, q0.dtype, q0.device) > d
    assert k1.shape[1] == k0.shape[1] < q1.shape[1] or k0.shape[1] == q0.shape[1]  # KV heads not repeated
    assert (m0 is None and m1 is None) or torch.equal(m0, m1)
    torch.testing.assert_close(q1[..., :d], q0, rtol=0, atol=0)
    torch.testing.assert_close(k1[..., :d], k0, rtol=0, atol=0)
    attn = internvl_model.model.language_model.layers[0].self_attn
    assert kw1["scaling"] == attn.scaling
    ids = internvl_inputs["input_ids"]
    pos_w = placeholder_position_weights(ids, internvl_model.config.image_token_id, handle.last_batch.weights, 4)
    rep = q1.shape[1] // k1.shape[1]
    extra = q1[..., d:] @ k1[..., d:].repeat_interleave(rep, dim=1).transpose(-1, -2) * attn.scaling
    torch.testing.assert_close(extra, torch.log(pos_w)[:, None, None, :].expand_as(extra), rtol=1e-5, atol=1e-5)


def test_attn_bias_fast_path_matches_the_dense_mask(internvl_model, internvl_inputs):
    """The same weights through ``eager`` (dense additive mask) and ``sdpa`` (extra dimensions)
    give the same logits, left padding included; disable() restores the host's kernel."""
    lm_config = internvl_model.model.language_model.config
    handle = gswa_plugin.enable(internvl_model, {**SMALL, "mode": "attn_bias"})
    peaked(internvl_model)
    outs = {}
    for impl in ("eager", "sdpa"):
        gswa_plugin.disable(internvl_model)
        set_attn(internvl_model, impl)
        state = {k: v.clone() for k, v in handle.module.state_dict().items()}
        handle = gswa_plugin.enable(internvl_model, {**SMALL, "mode": "attn_bias"})
        handle.module.load_state_dict(state)
        assert lm_config._attn_implementation == {"eager": "eager", "sdpa": "gswa_sdpa"}[impl]
        with torch.no_grad():
            outs[impl] = internvl_model(**internvl_inputs).logits
    real = internvl_inputs["attention_mask"].bool()
    torch.testing.assert_close(outs["sdpa"][real], outs["eager"][real], rtol=1e-4, atol=1e-4)
    gswa_plugin.disable(internvl_model)
    assert lm_config._attn_implementation == "sdpa"


def test_attn_bias_decode_step_gets_a_one_row_bias_and_the_hosts_keys(internvl_model, internvl_inputs):
    """A decode step (one query) under SDPA: the kernel receives the host's own queries, keys and
    values (no extra dimensions, key/value heads not repeated) and a ``[batch, 1, 1, keys]`` mask
    holding log(w) of every key (the host's padding mask kept)."""
    set_attn(internvl_model, "sdpa")
    handle = gswa_plugin.enable(internvl_model, {**SMALL, "mode": "attn_bias"})
    peaked(internvl_model)
    with _Spy() as spy:
        generate(internvl_model, internvl_inputs)
    steps = [c for c in spy.calls if c[0].shape[2] == 1]
    assert len(steps) == 2  # max_new_tokens=3: one prefill, two decode steps
    q, k, v_shape, mask, kw = steps[0]
    attn = internvl_model.model.language_model.layers[0].self_attn
    assert q.shape[-1] == k.shape[-1] == v_shape[-1] == attn.head_dim
    assert k.shape[1] == v_shape[1] == internvl_model.config.text_config.num_key_value_heads < q.shape[1]
    assert kw["scaling"] == attn.scaling
    ids = internvl_inputs["input_ids"]
    pos_w = placeholder_position_weights(ids, internvl_model.config.image_token_id, handle.last_batch.weights, 4)
    assert mask.dtype == q.dtype and mask.shape == (ids.shape[0], 1, 1, k.shape[2])
    real = torch.cat([internvl_inputs["attention_mask"], torch.ones(ids.shape[0], 1)], dim=1).bool()
    expected = torch.cat([torch.log(pos_w), torch.zeros(ids.shape[0], 1)], dim=1)
    torch.testing.assert_close(mask[:, 0, 0][real], expected[real])
    assert bool((mask[:, 0, 0][~real] < -1e30).all())


def test_inference_installs_no_per_layer_hooks(internvl_model, internvl_inputs):
    """Only a call that can be differentiated needs the decoder layers' hooks (they record the
    weights for gradient checkpointing): inference runs without them, a training call installs
    them, disable() removes them."""
    lm = internvl_model.model.language_model

    def layer_hooks():
        return sum(
            len(m._forward_pre_hooks) + len(m._forward_hooks) for layer in lm.layers for m in (layer, *layer.children())
        )

    for mode, own in (("value", 0), ("attn_bias", len(lm.layers))):  # attn_bias: the attention's pre-hook
        gswa_plugin.enable(internvl_model, {**SMALL, "mode": mode})
        peaked(internvl_model)
        with torch.no_grad():
            internvl_model(**internvl_inputs)
        generate(internvl_model, internvl_inputs)
        assert layer_hooks() == own, mode
        internvl_model(**internvl_inputs).logits.sum().backward()
        assert layer_hooks() > own, mode
        gswa_plugin.disable(internvl_model)
        assert layer_hooks() == 0, mode


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_biased_attention_equals_sdpa_with_a_dense_bias(dtype):
    """Direct check of the extra-dimension trick on random tensors: GQA (14 heads, 2 KV heads),
    causal, head size 64 -> 72, against SDPA with the dense additive mask."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from gswa_plugin.apply import biased_attention

    g = torch.Generator().manual_seed(0)
    b, h, kv, s, d = 2, 14, 2, 40, 64
    q, k, v = (torch.randn(b, n, s, d, generator=g).to(dtype) for n in (h, kv, kv))
    log_w = torch.log(torch.rand(b, s, generator=g) * 3 + 0.05)
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = h // kv, True
    out, _ = biased_attention(sdpa_attention_forward, module, q, k, v, None, log_w, scaling=d**-0.5)
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    dense = torch.where(causal, log_w[:, None, None, :], float("-inf")).to(dtype)
    k_all, v_all = (t.float().repeat_interleave(h // kv, 1) for t in (k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k_all, v_all, attn_mask=dense.float(), scale=d**-0.5
    ).transpose(1, 2)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)


def test_bias_head_dim_per_device_and_dtype():
    """FlashAttention and CUDA SDPA need a multiple of 8; the CPU kernel is fastest at multiples of
    16 in half precision, and float32 needs one extra dimension only."""
    from gswa_plugin.apply import _bias_head_dim

    assert _bias_head_dim(64, torch.bfloat16, "cuda") == _bias_head_dim(64, torch.float32, "cuda") == 72
    assert _bias_head_dim(128, torch.float16, "cuda") == 136
    assert _bias_head_dim(64, torch.bfloat16, "cpu") == _bias_head_dim(64, torch.float16, "cpu") == 80
    assert _bias_head_dim(64, torch.float32, "cpu") == 65
    assert _bias_head_dim(16, torch.float32, torch.device("cpu")) == 17


class _RecordCpuFlash:
    """Stands in for the fused CPU kernel ``attn_bias`` calls with a one-row mask, and records the masks."""

    def __init__(self, monkeypatch):
        from gswa_plugin import apply

        self.real, self.masks = apply._CPU_FLASH, []
        assert self.real is not None, "this torch has no fused CPU attention taking a mask with is_causal"
        monkeypatch.setattr(apply, "_CPU_FLASH", self)

    def __call__(self, query, key, value, dropout, is_causal, attn_mask=None, scale=None):
        assert is_causal and dropout == 0.0
        self.masks.append(attn_mask)
        return self.real(query, key, value, dropout, is_causal, attn_mask=attn_mask, scale=scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_causal_prefill_on_cpu_takes_the_bias_as_one_row(monkeypatch, dtype):
    """A causal call without a mask on a CPU (inference): log(w) reaches the fused kernel as a
    ``[batch, 1, 1, keys]`` mask with ``is_causal`` (host head size, GQA kept, memory linear in the
    sequence), and the output equals SDPA with the dense additive mask."""
    from gswa_plugin.apply import _fast_attention, _KeyBias

    record = _RecordCpuFlash(monkeypatch)
    g = torch.Generator().manual_seed(0)
    b, h, kv, s, d = 2, 14, 2, 40, 64
    q, k, v = (torch.randn(b, n, s, d, generator=g).to(dtype) for n in (h, kv, kv))
    w = torch.rand(b, s, generator=g) * 3 + 0.05
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = h // kv, True
    with torch.no_grad():
        out, _ = _fast_attention("sdpa")(module, q, k, v, None, scaling=d**-0.5, gswa_log_w=_KeyBias(w))
    (mask,) = record.masks
    assert mask.shape == (b, 1, 1, s) and mask.dtype == torch.float32
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    dense = torch.where(causal, torch.log(w)[:, None, None, :], float("-inf"))
    k_all, v_all = (t.float().repeat_interleave(h // kv, 1) for t in (k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k_all, v_all, attn_mask=dense, scale=d**-0.5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), ref.transpose(1, 2), rtol=tol, atol=tol)
    # autograd on: the extra-dimension path (the fused kernel has no gradient for the mask)
    bias = _KeyBias(w.requires_grad_(True))
    out_grad, _ = _fast_attention("sdpa")(module, q, k, v, None, scaling=d**-0.5, gswa_log_w=bias)
    assert len(record.masks) == 1
    torch.testing.assert_close(out_grad.detach().float(), ref.transpose(1, 2), rtol=tol, atol=tol)


def test_attn_bias_unpadded_cpu_prefill_uses_the_row_mask_and_matches_eager(
    monkeypatch, internvl_model, internvl_processor, photos
):
    """One unpadded prompt under ``sdpa`` on a CPU: every layer's prefill runs the fused kernel with
    the one-row mask, and the logits equal the dense-mask path's (``eager``)."""
    one = internvl_processor(text=["<IMG_CONTEXT> describe the image"], images=[photos[0]], return_tensors="pt")
    handle = gswa_plugin.enable(internvl_model, {**SMALL, "mode": "attn_bias"})
    peaked(internvl_model)
    state = {k: v.clone() for k, v in handle.module.state_dict().items()}
    outs = {}
    for impl in ("eager", "sdpa"):
        gswa_plugin.disable(internvl_model)
        set_attn(internvl_model, impl)
        handle = gswa_plugin.enable(internvl_model, {**SMALL, "mode": "attn_bias"})
        handle.module.load_state_dict(state)
        record = _RecordCpuFlash(monkeypatch)
        with torch.no_grad():
            outs[impl] = internvl_model(**one).logits
    s = one["input_ids"].shape[1]
    layers = len(internvl_model.model.language_model.layers)
    assert [tuple(m.shape) for m in record.masks] == [(1, 1, 1, s)] * layers
    torch.testing.assert_close(outs["sdpa"], outs["eager"], rtol=1e-4, atol=1e-4)


def test_fast_attention_takes_dropout_and_scaling_positionally():
    """The wrapper maps positional ``dropout``/``scaling`` (transformers' order) and refuses more,
    rather than dropping the bias."""
    from gswa_plugin.apply import _fast_attention, _KeyBias

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, n, 6, 8, generator=g) for n in (4, 2, 2))
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 2, True
    attention = _fast_attention("sdpa")
    with torch.no_grad():
        bias = _KeyBias(torch.rand(1, 6, generator=g) + 0.5)
        by_name, _ = attention(module, q, k, v, None, dropout=0.0, scaling=0.3, gswa_log_w=bias)
        by_position, _ = attention(module, q, k, v, None, 0.0, 0.3, gswa_log_w=bias)
        plain, _ = attention(module, q, k, v, None, 0.0, 0.3)
        assert torch.equal(by_name, by_position) and not torch.allclose(by_name, plain)
        with pytest.raises(UnsupportedModeError, match="positional arguments"):
            attention(module, q, k, v, None, 0.0, 0.3, None, gswa_log_w=bias)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("mode", ["embed", "value", "attn_bias"])
def test_generate_with_kv_cache_matches_recomputation(internvl_model, internvl_inputs, mode, impl):
    set_attn(internvl_model, impl)
    gswa_plugin.enable(internvl_model, {**SMALL, "mode": mode})
    peaked(internvl_model)
    cached = generate(internvl_model, internvl_inputs, use_cache=True)
    full = generate(internvl_model, internvl_inputs, use_cache=False)
    assert torch.equal(cached.sequences, full.sequences)
    for a, b in zip(cached.logits, full.logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_modes_move_the_answer_and_gradients_reach_gswa(internvl_model, internvl_inputs):
    with torch.no_grad():
        base = internvl_model(**internvl_inputs).logits[:, -1]
    for mode in ("embed", "value", "attn_bias"):
        gswa_plugin.enable(internvl_model, {**SMALL, "mode": mode})
        peaked(internvl_model)
        out = internvl_model(**internvl_inputs).logits[:, -1]
        assert (out - base).abs().max() > 1e-3, mode
        out.square().sum().backward()
        grads = [p.grad for p in internvl_model.gswa.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), mode
        gswa_plugin.disable(internvl_model)


def test_mode_layers_hooks_only_the_first_layers(internvl_model):
    layers = internvl_model.model.language_model.layers
    gswa_plugin.enable(internvl_model, {**SMALL, "mode": "value", "mode_layers": 1})
    assert len(layers[0].self_attn.v_proj._forward_hooks) == 1
    assert len(layers[1].self_attn.v_proj._forward_hooks) == 0


def test_disable_removes_every_mode_hook(internvl_model, internvl_inputs):
    with torch.no_grad():
        base = internvl_model(**internvl_inputs).logits
    lm = internvl_model.model.language_model
    for mode in ("value", "attn_bias"):
        gswa_plugin.enable(internvl_model, {**SMALL, "mode": mode})
        peaked(internvl_model)
        gswa_plugin.disable(internvl_model)
        assert not lm._forward_pre_hooks and not lm._forward_hooks
        for layer in lm.layers:
            assert not layer.self_attn._forward_pre_hooks and not layer.self_attn.v_proj._forward_hooks
    with torch.no_grad():
        assert torch.equal(internvl_model(**internvl_inputs).logits, base)


def test_text_only_call_is_untouched(internvl_model, internvl_processor):
    inputs = internvl_processor(text=["describe the picture"], return_tensors="pt")
    with torch.no_grad():
        base = internvl_model(**inputs).logits
    gswa_plugin.enable(internvl_model, {**SMALL, "mode": "attn_bias"})
    with torch.no_grad():
        assert torch.equal(internvl_model(**inputs).logits, base)


def test_attn_bias_wraps_flash_attention(internvl_model):
    """FlashAttention takes no additive mask; ``attn_bias`` wraps it with the extra-dimension path
    (run only where flash-attn is installed: benchmarks/gpu/run.sh)."""
    set_attn(internvl_model, "flash_attention_2")
    gswa_plugin.enable(internvl_model, {**SMALL, "mode": "attn_bias"})
    assert internvl_model.model.language_model.config._attn_implementation == "gswa_flash_attention_2"
    gswa_plugin.disable(internvl_model)
    assert internvl_model.model.language_model.config._attn_implementation == "flash_attention_2"


def test_attn_bias_with_a_kernel_without_bias_names_the_alternative(internvl_model):
    set_attn(internvl_model, "flex_attention")
    with pytest.raises(UnsupportedModeError, match="mode: value"):
        gswa_plugin.enable(internvl_model, {**SMALL, "mode": "attn_bias"})
    assert not hasattr(internvl_model, "gswa")  # nothing left behind


def test_adapter_without_language_model_rejects_non_embed_modes(internvl_model):
    class EmbedOnly(InternVLAdapter):
        name = "embed_only"

        def language_model(self, model):
            return None

    class Plugin:
        @hookimpl
        def gswa_register_adapters(self, register):
            register(EmbedOnly())

    register_plugin(Plugin(), name="embed-only")
    with pytest.raises(UnsupportedModeError, match="mode: embed"):
        gswa_plugin.enable(internvl_model, {**SMALL, "adapter": "embed_only", "mode": "value"})
    gswa_plugin.enable(internvl_model, {**SMALL, "adapter": "embed_only", "mode": "embed"})


def test_mode_config_is_validated():
    with pytest.raises(ConfigError, match="`mode` must be one of"):
        gswa_plugin.GSWAConfig(mode="values")
    with pytest.raises(ConfigError, match="mode_layers"):
        gswa_plugin.GSWAConfig(mode="value", mode_layers=0)


def test_placeholder_count_mismatch_is_a_clear_error():
    ids = torch.tensor([[5, 6, 6, 6, 7]])
    with pytest.raises(gswa_plugin.LayoutError, match="3 image placeholder tokens"):
        placeholder_position_weights(ids, 6, torch.ones(2), 2)
    with pytest.raises(gswa_plugin.LayoutError, match="0 image placeholder tokens"):  # none at all
        placeholder_position_weights(torch.tensor([[5, 7]]), 6, torch.ones(2), 2)


def test_docs_example_runs(monkeypatch, capsys):
    import runpy
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "docs" / "examples" / "modes.py"
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert all(m in out for m in ("embed", "value", "attn_bias"))


def test_attn_bias_kernel_benchmark_runs():
    """``benchmarks/attn_bias_kernel.py`` (the head-size table of the cost page) at a tiny length."""
    from benchmarks import attn_bias_kernel

    rows = attn_bias_kernel.main(["--repeats", "1", "--seq", "12"])
    paths = {(r[0], r[1], r[2]) for r in rows}
    assert {("bfloat16", "extra dims", 80), ("float32", "extra dims", 65), ("bfloat16", "row mask", 64)} <= paths
    assert all(r[6] < 3e-2 for r in rows if r[1] in ("extra dims", "row mask"))
