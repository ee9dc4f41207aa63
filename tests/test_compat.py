"""The compatibility matrix (issue 12): every registered adapter x every mode it supports x the
everyday host settings of ``gswa_plugin.testing.compat.SETTINGS``, on the contract cases' tiny
real hosts. A cell listed as supported must hold; a refused cell must raise its clear error.

Weights are made non-uniform by perturbing GSWA's parameters (seeded), so a setting that drops
or mixes weights changes the numbers compared here.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
from typing import Any

import pytest
import torch

import gswa_plugin
from gswa_plugin import plugins
from gswa_plugin.apply import current_position_weights
from gswa_plugin.errors import LayoutError
from gswa_plugin.testing.compat import SETTINGS, cell_status, supported_modes

from .host_cases import all_cases

CASES = {c.adapter: c for c in all_cases()}


def _cells() -> list[Any]:
    cells = []
    registry = plugins.adapters()
    for name in plugins.adapter_names():
        if name not in CASES:
            continue  # test_contract fails for an adapter without a case; see the test below
        modes = supported_modes(registry[name])
        for mode in modes:
            for setting in SETTINGS:
                # tracing a whole host takes 8-25 s: the default run compiles one mode per adapter
                # (value, the mode with hooks inside the language model), CI's compile step the rest
                heavy = setting.name == "compile" and mode != ("value" if "value" in modes else modes[0])
                marks = [pytest.mark.compile_matrix] if heavy else []
                cells.append(pytest.param(name, mode, setting.name, id=f"{name}-{mode}-{setting.name}", marks=marks))
    return cells


def test_every_registered_adapter_is_in_the_matrix_or_says_why() -> None:
    """No silent gap: an adapter without a matrix case must be declared in ``OUTSIDE_MATRIX`` (the
    docs table then says what is checked instead), and a declared one must not have a case."""
    from gswa_plugin.testing.compat import OUTSIDE_MATRIX

    names = set(plugins.adapter_names())
    missing = sorted(n for n in names if n not in CASES and n not in OUTSIDE_MATRIX)
    assert not missing, f"adapters neither in the compatibility matrix nor in OUTSIDE_MATRIX: {missing}"
    stale = sorted(n for n in OUTSIDE_MATRIX if n in CASES)
    assert not stale, f"OUTSIDE_MATRIX lists adapters the matrix now runs: {stale}"


def _enable(model: torch.nn.Module, case: Any, mode: str, perturb: bool = True, **extra: Any) -> Any:
    handle = gswa_plugin.enable(model, {**(case.config or {}), "mode": mode, **extra})
    if perturb:
        with torch.no_grad():
            for i, p in enumerate(handle.module.parameters()):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1000 + i)) * 0.5)
    return handle


def _inputs(case: Any) -> dict[str, Any]:
    inputs = dict(case.make_inputs())
    inputs.pop("labels", None)
    return inputs


def _gen_inputs(case: Any) -> dict[str, Any]:
    inputs = _inputs(case)
    inputs.pop("image_flags", None)  # a training input of InternVL's remote-code forward
    return _left_padded(inputs)


def _left_padded(inputs: dict[str, Any]) -> dict[str, Any]:
    """The batch with its padding moved to the left (decoder-only generation)."""
    mask = inputs.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return inputs
    out = dict(inputs)
    seq = mask.shape[1]
    lengths = mask.sum(dim=1)
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape == mask.shape:
            rows = []
            for r in range(mask.shape[0]):
                valid = value[r][mask[r].bool()]
                pad = value[r][~mask[r].bool()]
                rows.append(
                    torch.cat([pad, valid])
                    if key != "attention_mask"
                    else torch.cat([torch.zeros_like(pad), torch.ones_like(valid)])
                )
            out[key] = torch.stack(rows)
    assert int(out["attention_mask"].sum()) == int(lengths.sum()) and out["attention_mask"].shape[1] == seq
    return out


def _enable_checkpointing(model: torch.nn.Module, reentrant: bool) -> None:
    """transformers >= 5.2 calls it ``activation_checkpointing_enable``; InternVL's remote code
    checkpoints its language model (as its trainer does)."""
    target = model if getattr(model, "supports_gradient_checkpointing", False) else model.language_model
    if hasattr(target, "activation_checkpointing_enable"):
        target.activation_checkpointing_enable({"use_reentrant": reentrant})
    else:
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})


@functools.lru_cache(maxsize=None)
def _base_grads(adapter: str, mode: str) -> dict[str, torch.Tensor | None]:
    return _grads(CASES[adapter], mode, None)


def _grads(case: Any, mode: str, checkpointing: str | None) -> dict[str, torch.Tensor | None]:
    torch.manual_seed(0)
    model = case.make_model()
    handle = _enable(model, case, mode)
    model.train()
    if checkpointing:
        _enable_checkpointing(model, checkpointing == "reentrant")
    out = model(**_inputs(case))
    out.logits.float().pow(2).mean().backward()
    return {n: None if p.grad is None else p.grad.clone() for n, p in handle.module.named_parameters()}


def _generate(model: torch.nn.Module, inputs: dict[str, Any], **kwargs: Any) -> torch.Tensor:
    torch.manual_seed(7)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, pad_token_id=0, **kwargs)
    return out if isinstance(out, torch.Tensor) else out.sequences


def _lm_inputs(model: torch.nn.Module, case: Any, run: Any) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(inputs_embeds, position weights) the language model receives in its first call."""
    lm = case.language_model(model) if callable(case.language_model) else None
    seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def hook(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if not seen:
            handle = gswa_plugin.get_handle(model)
            w = current_position_weights(handle)
            seen.append((kwargs["inputs_embeds"].detach().clone(), None if w is None else w.detach().clone()))

    h = lm.register_forward_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        h.remove()
    return seen


@pytest.mark.parametrize("adapter,mode,setting", _cells())
def test_compatibility(adapter: str, mode: str, setting: str, tmp_path) -> None:
    case = CASES[adapter]
    status, reason = cell_status(adapter, mode, setting)
    if status == "n/a":
        pytest.skip(f"not applicable: {reason}")  # listed in the docs table with the reason
    ctx = pytest.raises(Exception, match=reason) if status == "refused" else contextlib.nullcontext()
    with ctx:
        CHECKS[setting](case, mode, tmp_path)


def _check_checkpointing(kind: str) -> Any:
    def check(case: Any, mode: str, tmp_path: Any) -> None:
        base = _base_grads(case.adapter, mode)
        got = _grads(case, mode, kind)
        assert all(g is not None for g in base.values())
        missing = [n for n, g in got.items() if g is None]
        assert not missing, f"no gradient for {len(missing)} of {len(got)} GSWA parameters under {kind} checkpointing"
        for n in base:
            torch.testing.assert_close(got[n], base[n], rtol=1e-5, atol=1e-6, msg=lambda m: f"{n}: {m}")

    return check


def _check_generate(**kwargs: Any) -> Any:
    def check(case: Any, mode: str, tmp_path: Any) -> None:
        model = case.make_model()
        inputs = _gen_inputs(case)
        plain = _generate(model, inputs, **kwargs)
        _enable(model, case, mode, perturb=False)
        assert torch.equal(_generate(model, inputs, **kwargs), plain)

    return check


def _check_beams(case: Any, mode: str, tmp_path: Any) -> None:
    _check_generate(num_beams=2)(case, mode, tmp_path)
    _check_generate(num_beams=2, num_return_sequences=2)(case, mode, tmp_path)
    model = case.make_model()
    inputs = _gen_inputs(case)
    _enable(model, case, mode)
    one = _lm_inputs(model, case, lambda: _generate(model, inputs))
    beams = _lm_inputs(model, case, lambda: _generate(model, inputs, num_beams=2, num_return_sequences=2))
    (e1, w1), (e2, w2) = one[0], beams[0]
    torch.testing.assert_close(e2, e1.repeat_interleave(2, dim=0))
    if mode != "embed":
        assert w1 is not None and w2 is not None and not torch.all(w1 == 1)
        torch.testing.assert_close(w2, w1.repeat_interleave(2, dim=0))


def _logits(model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _check_deepcopy(case: Any, mode: str, tmp_path: Any) -> None:
    model = case.make_model()
    inputs = _inputs(case)
    plain = _logits(model, inputs)
    handle = _enable(model, case, mode)
    before = _logits(model, inputs)
    clone = copy.deepcopy(model)
    twin = gswa_plugin.get_handle(clone)
    assert twin is not handle and twin.module is clone.gswa and twin.model is clone
    torch.testing.assert_close(_logits(clone, inputs), before, rtol=0, atol=0)
    with torch.no_grad():
        for p in clone.gswa.parameters():
            p.mul_(-2.0)
    assert not torch.equal(_logits(clone, inputs), before), "the copy does not use its own gswa module"
    torch.testing.assert_close(_logits(model, inputs), before, rtol=0, atol=0)
    gswa_plugin.disable(clone)
    assert gswa_plugin.is_enabled(model)
    torch.testing.assert_close(_logits(model, inputs), before, rtol=0, atol=0)
    torch.testing.assert_close(_logits(clone, inputs), plain, rtol=0, atol=0)


def _check_save_pretrained(case: Any, mode: str, tmp_path: Any) -> None:
    from gswa_plugin.integrations.transformers import from_pretrained_with_gswa

    model = case.make_model()
    inputs = _inputs(case)
    original = _enable(model, case, mode, temperature=0.7, min_weight=0.1)
    model.save_pretrained(tmp_path)
    loaded = from_pretrained_with_gswa(tmp_path, model_class=type(model))
    if hasattr(model, "img_context_token_id"):  # set by InternVL's chat(), not saved with the config
        loaded.img_context_token_id = model.img_context_token_id
    handle = gswa_plugin.get_handle(loaded)
    assert (handle.config.temperature, handle.config.min_weight, handle.config.mode) == (0.7, 0.1, mode)
    want = original.module.state_dict()
    for key, value in handle.module.state_dict().items():
        assert torch.equal(value, want[key]), key
    _logits(loaded, inputs)  # and it runs


def _check_compile(case: Any, mode: str, tmp_path: Any) -> None:
    model = case.make_model()
    inputs = _inputs(case)
    _enable(model, case, mode)
    eager = _logits(model, inputs)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    torch.testing.assert_close(_logits(compiled, inputs), eager, rtol=1e-5, atol=1e-5)


def _check_threads(case: Any, mode: str, tmp_path: Any) -> None:
    model = case.make_model()
    full = _inputs(case)
    _enable(model, case, mode)
    # each thread sends one image of the case's batch of two (different tile counts)
    singles = [_row(full, r, list(case.views_per_image)) for r in range(2)]
    want = []
    for inputs in singles:
        want.append((_logits(model, inputs), [w.clone() for w in gswa_plugin.last_weights(model)]))
    results: dict[tuple[int, int], Any] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def work(r: int) -> None:
        try:
            barrier.wait()
            for it in range(3):
                logits = _logits(model, singles[r])
                results[(r, it)] = (
                    logits,
                    [w.clone() for w in gswa_plugin.get_handle(model).last_batch.tile_weights()],
                )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (r, _), (logits, weights) in results.items():
        torch.testing.assert_close(logits, want[r][0], rtol=0, atol=0)
        for got, exp in zip(weights, want[r][1]):
            torch.testing.assert_close(got, exp, rtol=0, atol=0)


def _row(inputs: dict[str, Any], r: int, views: list[int]) -> dict[str, Any]:
    """Sample ``r`` of a two-image batch from the host's processor output: per-sample tensors
    by row; flat per-view tensors (InternVL's pixel values) by the views each image has."""
    rows = inputs["input_ids"].shape[0]
    start = sum(views[:r])
    out = {}
    for key, value in inputs.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            out[key] = value
        elif value.shape[0] == rows:
            out[key] = value[r : r + 1]
        elif value.shape[0] == sum(views):
            out[key] = value[start : start + views[r]]
        else:
            out[key] = value
    return out


def _check_direct(case: Any, mode: str, tmp_path: Any) -> None:
    model = case.make_model()
    inputs = _inputs(case)
    method, call = _direct_call(model, inputs)
    with torch.no_grad():
        plain = _as_tensor(call())
    _enable(model, case, mode, perturb=False)
    with torch.no_grad():
        torch.testing.assert_close(_as_tensor(_direct_call(model, inputs)[1]()), plain, rtol=0, atol=0)
    gswa_plugin.disable(model)
    handle = _enable(model, case, mode)
    assert not handle.module.is_identity()
    _logits(model, inputs)
    want = [w.clone() for w in gswa_plugin.last_weights(model)]
    try:
        with torch.no_grad():
            _direct_call(model, inputs)[1]()
    except LayoutError as exc:  # the grouping is not in the call: said, with the fix
        assert "gswa_plugin.tiles" in str(exc)
    else:  # the call itself groups the views per image (LLaVA-NeXT's per-image tuple): right weights
        for got, exp in zip(gswa_plugin.last_weights(model), want):
            torch.testing.assert_close(got, exp)


def _direct_call(model: torch.nn.Module, inputs: dict[str, Any]) -> tuple[str, Any]:
    inner = getattr(model, "model", model)
    if hasattr(model, "extract_feature"):  # InternVL's remote code
        return "extract_feature", lambda: model.extract_feature(inputs["pixel_values"])
    fn = inner.get_image_features
    import inspect

    names = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in inputs.items() if k in names}
    return "get_image_features", lambda: fn(**kwargs)


def _as_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    value = getattr(out, "pooler_output", None)
    if value is None:
        value = out[0] if isinstance(out, (tuple, list)) else out
    if isinstance(value, (tuple, list)):
        return torch.cat([v.reshape(-1, v.shape[-1]) for v in value])
    return value


CHECKS = {
    "gc-reentrant": _check_checkpointing("reentrant"),
    "gc-non-reentrant": _check_checkpointing("non-reentrant"),
    "greedy": _check_generate(),
    "sample": _check_generate(do_sample=True, top_k=5),
    "beams": _check_beams,
    "deepcopy": _check_deepcopy,
    "save-pretrained": _check_save_pretrained,
    "compile": _check_compile,
    "threads": _check_threads,
    "direct-features": _check_direct,
}


def test_every_setting_has_a_check() -> None:
    assert set(CHECKS) == {s.name for s in SETTINGS}
