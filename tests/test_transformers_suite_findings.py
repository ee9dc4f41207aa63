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
