"""Regressions for the GSWA bugs that transformers' own model tests found with GSWA enabled
(``scripts/transformers_model_tests.sh``, docs page 'transformers' model tests'). Each test
runs on the contract cases' tiny real hosts, without transformers' test files.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch

import gswa_plugin

from .host_cases import all_cases

#: the cases whose inner model has transformers' ``get_image_features`` (the remote-code and
#: LLaVA-torch hosts have no such method)
FEATURE_CASES = {
    c.adapter: c
    for c in all_cases()
    if c.adapter in ("internvl", "llava_next", "llava_onevision", "idefics3", "smolvlm", "aya_vision")
}


def _features_call(model: torch.nn.Module, inputs: dict[str, Any], **extra: Any) -> Any:
    fn = model.model.get_image_features
    names = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in inputs.items() if k in names and k != "input_ids"}
    with torch.no_grad():
        return fn(**kwargs, **extra)


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _flat(item)]
    if hasattr(out, "to_tuple"):
        return _flat(out.to_tuple())
    return []


@pytest.mark.parametrize("adapter", sorted(FEATURE_CASES))
@pytest.mark.parametrize("how", ["config", "kwarg-false", "kwarg-true"])
def test_get_image_features_keeps_the_return_type(adapter: str, how: str) -> None:
    """transformers' ``test_get_image_features_output_1`` sets ``config.return_dict = False`` and
    calls ``get_image_features`` without ``return_dict``: the plain host returns a tuple, and so
    must the host with GSWA (the seam wrappers used to return a ``ModelOutput`` there)."""
    case = FEATURE_CASES[adapter]
    model = case.make_model().eval()
    inputs = dict(case.make_inputs())
    extra: dict[str, Any] = {}
    if how == "config":
        model.config.return_dict = False
        model.model.config.return_dict = False
    else:
        extra["return_dict"] = how == "kwarg-true"
    plain = _features_call(model, inputs, **extra)
    gswa_plugin.enable(model, {**(case.config or {}), "mode": "value"})
    got = _features_call(model, inputs, **extra)
    assert type(got) is type(plain), f"{type(got).__name__} where the plain host returns {type(plain).__name__}"
    want_t, got_t = _flat(plain), _flat(got)
    assert len(got_t) == len(want_t)
    for g, w in zip(got_t, want_t):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_enable_refuses_a_model_on_the_meta_device() -> None:
    """transformers' ``test_can_init_all_missing_weights`` builds the model inside
    ``from_pretrained`` on the meta device: GSWA enabled there got its parameters from the
    host's ``_init_weights`` when the weights were materialised, so it silently stopped being
    the identity. ``enable()`` now refuses such a model, naming the fix."""
    from transformers import InternVLForConditionalGeneration

    from gswa_plugin.errors import MissingModuleError
    from gswa_plugin.testing.tiny import tiny_internvl_config

    with torch.device("meta"):
        model = InternVLForConditionalGeneration(tiny_internvl_config())
    with pytest.raises(MissingModuleError, match="meta device.*from_pretrained_with_gswa"):
        gswa_plugin.enable(model, {"mode": "value"})
    assert not gswa_plugin.is_enabled(model)


def test_hf_suite_enables_after_from_pretrained_at_identity() -> None:
    """The pytest plugin that runs transformers' tests with GSWA enables a model that
    ``from_pretrained`` builds once its weights are loaded, at GSWA's identity; a model built by
    its ``__init__`` right away; and restores both methods when it is uninstalled."""
    from transformers import InternVLForConditionalGeneration, PreTrainedModel

    from gswa_plugin.testing import hf_suite
    from gswa_plugin.testing.tiny import tiny_internvl_config

    init, from_pretrained = InternVLForConditionalGeneration.__init__, PreTrainedModel.__dict__["from_pretrained"]
    hf_suite.install()
    try:
        built = InternVLForConditionalGeneration(tiny_internvl_config())
        loaded = InternVLForConditionalGeneration.from_pretrained(None, config=tiny_internvl_config(), state_dict={})
    finally:
        hf_suite.uninstall()
    for model in (built, loaded):
        handle = gswa_plugin.get_handle(model)
        assert handle.config.mode == "value" and handle.module.is_identity()
    assert InternVLForConditionalGeneration.__init__ is init
    assert PreTrainedModel.__dict__["from_pretrained"] is from_pretrained
