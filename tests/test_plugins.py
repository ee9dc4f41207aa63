"""The pluggy hook system: built-ins registered through hooks, third-party plugins, wrappers, loading rules."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

import gswa_plugin
from gswa_plugin import hookimpl, plugins
from gswa_plugin.errors import AdapterNotFoundError, PluginLoadError, RegistrationError
from gswa_plugin.hookspecs import HOOK_NAMES

from .conftest import lm_inputs_embeds


class FirstTileScorer(nn.Module):
    """A test variant: all attention on the first tile."""

    def __init__(self, summary_dim, cfg):
        super().__init__()
        self.gswa_bias = nn.Parameter(torch.zeros(()))

    def forward(self, tokens, tile_mask):
        logits = torch.zeros(tile_mask.shape, dtype=torch.float32)
        logits[:, 0] = 4.0
        return logits + self.gswa_bias


class VariantPlugin:
    @hookimpl
    def gswa_register_variants(self, register):
        register("first_tile", FirstTileScorer)


class Observer:
    def __init__(self):
        self.seen_in, self.seen_out, self.reported = [], [], []

    @hookimpl(wrapper=True)
    def gswa_process_tiles(self, batch, handle):
        self.seen_in.append(batch.layout)
        result = yield
        self.seen_out.append(result.weights.clone())
        return result

    @hookimpl
    def gswa_weights_computed(self, weights, batch, handle):
        self.reported.append([w.clone() for w in weights])


def test_hook_names_carry_the_project_prefix():
    assert set(HOOK_NAMES) == {
        "gswa_register_adapters",
        "gswa_register_variants",
        "gswa_process_tiles",
        "gswa_weights_computed",
    }


def test_builtins_register_through_the_hooks():
    assert "internvl" in plugins.adapter_names()
    assert plugins.variant_names()[:3] == ["self_attn", "cross_attn", "cosine"]
    assert plugins.variant_sources()["cosine"] == "gswa_plugin.builtin"


def test_plugin_variant_is_used_by_enable(internvl_model, internvl_inputs):
    plugins.register_plugin(VariantPlugin(), name="test-variant")
    assert "first_tile" in plugins.variant_names()
    gswa_plugin.enable(internvl_model, {"variant": "first_tile"})
    with torch.no_grad():
        internvl_model(**internvl_inputs)
    for w in gswa_plugin.last_weights(internvl_model):
        assert int(w.argmax()) == 0 and w.mean().item() == pytest.approx(1.0, abs=1e-5)
    assert "gswa.scorer.gswa_bias" in dict(internvl_model.named_parameters())


def test_observer_wrapper_and_report_hook_see_the_weights(internvl_model, internvl_inputs):
    obs = Observer()
    plugins.register_plugin(obs, name="observer")
    gswa_plugin.enable(internvl_model, {"variant": "cosine"})
    with torch.no_grad():
        internvl_model(**internvl_inputs)
    assert obs.seen_in[0].views_per_image == (5, 4)
    handle = gswa_plugin.get_handle(internvl_model)
    assert torch.equal(obs.seen_out[0], handle.last_batch.weights)
    assert [w.tolist() for w in obs.reported[0]] == [w.tolist() for w in gswa_plugin.last_weights(internvl_model)]


def test_wrapper_can_modify_the_batch(internvl_model, internvl_inputs):
    class ZeroFirstView:
        @hookimpl(wrapper=True)
        def gswa_process_tiles(self, batch, handle):
            result = yield
            result.features = result.features.clone()
            result.features[0] = 0
            return result

    plugins.register_plugin(ZeroFirstView(), name="zero")
    gswa_plugin.enable(internvl_model)
    embeds = lm_inputs_embeds(internvl_model, **internvl_inputs)
    ids = internvl_inputs["input_ids"]
    first = (ids == internvl_model.config.image_token_id).nonzero()[:4]
    assert torch.all(embeds[first[:, 0], first[:, 1]] == 0)


def test_duplicate_registration_is_an_error():
    class Dup:
        @hookimpl
        def gswa_register_variants(self, register):
            register("cosine", FirstTileScorer)

    plugins.register_plugin(Dup(), name="dup")
    with pytest.raises(RegistrationError, match="variant 'cosine' is registered twice: by 'gswa_plugin.builtin' and by 'dup'"):
        plugins.variant_names()


def test_register_rejects_non_adapter():
    class Bad:
        @hookimpl
        def gswa_register_adapters(self, register):
            register("not an adapter")

    plugins.register_plugin(Bad(), name="bad")
    with pytest.raises(RegistrationError, match="expected an Adapter instance, got str"):
        plugins.adapter_names()


def test_no_adapter_matches_lists_registered_ones():
    model = nn.Linear(2, 2)
    with pytest.raises(AdapterNotFoundError, match=r"no registered adapter matches Linear.*Registered adapters: .*internvl.*declaratively"):
        gswa_plugin.enable(model)


def test_missing_module_is_named(internvl_model):
    del internvl_model.model.multi_modal_projector
    with pytest.raises(gswa_plugin.MissingModuleError, match=r"lacks `model.multi_modal_projector`"):
        gswa_plugin.enable(internvl_model)


# --- third-party plugins through the entry-point group ---------------------------------------
@pytest.fixture
def installed_plugins(tmp_path, monkeypatch):
    """Two fake installed distributions exposing entry points in group `gswa`: one good, one broken."""
    (tmp_path / "good_gswa_plugin.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn
            from gswa_plugin import hookimpl

            class Uniformish(nn.Module):
                def __init__(self, d, cfg):
                    super().__init__()
                def forward(self, tokens, mask):
                    return torch.zeros(mask.shape)

            @hookimpl
            def gswa_register_variants(register):
                register("from_entry_point", Uniformish)
            """
        )
    )
    (tmp_path / "broken_gswa_plugin.py").write_text("raise RuntimeError('boom at import')\n")
    for dist, mod in (("good_gswa", "good_gswa_plugin"), ("broken_gswa", "broken_gswa_plugin")):
        info = tmp_path / f"{dist}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[gswa]\n{dist} = {mod}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for mod in ("good_gswa_plugin", "broken_gswa_plugin"):
        sys.modules.pop(mod, None)


def test_env_var_selects_installed_plugin(installed_plugins, monkeypatch):
    monkeypatch.setenv("GSWA_PLUGINS", "good_gswa")
    plugins.reset_plugin_manager()
    assert "from_entry_point" in plugins.variant_names()
    assert plugins.variant_sources()["from_entry_point"] == "good_gswa"


def test_empty_env_var_loads_no_third_party_plugin(installed_plugins, monkeypatch):
    monkeypatch.setenv("GSWA_PLUGINS", "")
    plugins.reset_plugin_manager()
    assert "from_entry_point" not in plugins.variant_names()


def test_failing_plugin_is_an_error_not_a_log_line(installed_plugins, monkeypatch):
    monkeypatch.delenv("GSWA_PLUGINS")  # unset: every installed plugin loads
    plugins.reset_plugin_manager()
    with pytest.raises(PluginLoadError, match=r"plugin 'broken_gswa' \(broken_gswa_plugin\) failed to load: RuntimeError: boom at import"):
        plugins.variant_names()


def test_requested_plugin_not_installed(installed_plugins, monkeypatch):
    monkeypatch.setenv("GSWA_PLUGINS", "good_gswa,nope")
    plugins.reset_plugin_manager()
    with pytest.raises(PluginLoadError, match=r"asks for plugin\(s\) nope but no such entry point"):
        plugins.variant_names()


def test_registries_are_built_once_per_set_of_plugins():
    calls = []

    class Counting:
        @hookimpl
        def gswa_register_variants(self, register):
            calls.append(1)
            register("counted", lambda d, cfg: nn.Identity())

    plugin = Counting()
    plugins.register_plugin(plugin, name="counting")
    try:
        for _ in range(5):
            assert "counted" in plugins.variants() and "counted" in plugins.variant_names()
        assert len(calls) == 1  # built once, not on every lookup
    finally:
        plugins.unregister_plugin(plugin)
    assert "counted" not in plugins.variants()  # another set of plugins, another registry

    class Other:
        @hookimpl
        def gswa_register_variants(self, register):
            register("other", lambda d, cfg: nn.Identity())

    other = Other()
    plugins.register_plugin(plugin, name="counting")
    plugins.register_plugin(other, name="other")
    try:
        assert {"counted", "other"} <= set(plugins.variants()) and len(calls) == 2
    finally:
        plugins.unregister_plugin(plugin)
        plugins.unregister_plugin(other)
