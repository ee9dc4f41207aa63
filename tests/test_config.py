"""GSWAConfig: YAML and dict loading, and every validation error, checked by message."""

from __future__ import annotations

import math

import pytest

from gswa_plugin import ConfigError, GSWAConfig
from gswa_plugin.config import MODES, HostDeclaration, default_config_path, field_docs, resolve_config
from gswa_plugin.plugins import check_config


def test_defaults_and_every_field_documented():
    cfg = GSWAConfig()
    assert cfg.variant == "self_attn" and cfg.mode == "embed"
    for name, info in GSWAConfig.model_fields.items():
        assert info.description, f"field {name} has no help text"
    assert [d[0] for d in field_docs()] == list(GSWAConfig.model_fields)
    for model in (HostDeclaration, *[HostDeclaration.model_fields[k].annotation for k in ("match",)]):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no help text"


def test_yaml_block_inside_a_host_yaml(tmp_path):
    path = tmp_path / "host.yaml"
    path.write_text(
        "trainer_args:\n  learning_rate: 1.0e-5\nmodel_config:\n  name: x\n"
        "gswa:\n  variant: cross_attn\n  temperature: 0.5\n"
    )
    cfg = GSWAConfig.from_yaml(path)
    assert cfg.variant == "cross_attn" and cfg.temperature == 0.5


def test_dict_with_or_without_block():
    assert GSWAConfig.from_dict({"gswa": {"variant": "cosine"}}).variant == "cosine"
    assert GSWAConfig.from_dict({"variant": "cosine"}).variant == "cosine"
    assert resolve_config({"num_layers": 2}).num_layers == 2


def test_round_trip_yaml(tmp_path):
    cfg = GSWAConfig(variant="cross_attn", min_weight=0.1)
    p = tmp_path / "c.yaml"
    p.write_text(cfg.to_yaml())
    assert GSWAConfig.from_yaml(p) == cfg


def test_packaged_default_is_valid():
    assert GSWAConfig.from_yaml(default_config_path()).variant == "cosine"


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown key `varient`; did you mean `variant`\?"):
        GSWAConfig.from_dict({"varient": "cosine"})


def test_wrong_type_names_field_and_allowed():
    with pytest.raises(ConfigError, match=r"`hidden_size` must be int, got str 'big'"):
        GSWAConfig.from_dict({"hidden_size": "big"})
    with pytest.raises(ConfigError, match=r"`identity_init` must be bool"):
        GSWAConfig.from_dict({"identity_init": "yes"})


def test_out_of_range_and_choices():
    with pytest.raises(ConfigError, match=r"`temperature` must be > 0, got 0"):
        GSWAConfig.from_dict({"temperature": 0})
    with pytest.raises(ConfigError, match=r"`min_weight` must be < 1, got 1.5"):
        GSWAConfig.from_dict({"min_weight": 1.5})
    with pytest.raises(ConfigError, match=r"`summary` must be one of 'auto', 'cls', 'mean'; got 'max'"):
        GSWAConfig.from_dict({"summary": "max"})
    with pytest.raises(ConfigError, match=r"`mode` must be one of 'embed', 'value', 'attn_bias'; got 'embedd'; did you mean `embed`\?"):
        GSWAConfig.from_dict({"mode": "embedd"})
    with pytest.raises(ConfigError, match=r"`num_heads` \(3\) must divide `hidden_size` \(100\)"):
        GSWAConfig.from_dict({"hidden_size": 100, "num_heads": 3})


def test_registry_names_are_checked_by_check_config_not_by_the_config():
    # building a config imports no adapter and loads no plugin: plugin names are checked apart
    cfg = GSWAConfig.from_dict({"variant": "self_atn", "adapter": "intervl"})
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    problems = info.value.problems
    assert len(problems) == 2
    assert "`variant` must be one of" in problems[0] and "did you mean `self_attn`?" in problems[0]
    assert "`adapter` must be one of" in problems[1] and "did you mean `internvl`?" in problems[1]
    assert check_config(GSWAConfig()) == GSWAConfig()


@pytest.mark.parametrize("key", ["temperature", "min_weight", "global_weight", "cosine_temperature", "mlp_ratio"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(key, value):
    with pytest.raises(ConfigError, match=rf"`{key}` must be a finite number"):
        GSWAConfig.from_dict({key: value})


def test_types_are_strict():
    for key, value in (("hidden_size", 768.0), ("hidden_size", True), ("temperature", "1"), ("seed", None)):
        with pytest.raises(ConfigError, match=rf"`{key}` must be"):
            GSWAConfig.from_dict({key: value})
    assert GSWAConfig.from_dict({"temperature": 1}).temperature == 1.0  # an int is a valid float


def test_assignment_is_validated_and_a_failed_one_changes_nothing():
    cfg = GSWAConfig()
    with pytest.raises(ConfigError, match="`num_heads` must be >= 1"):
        cfg.num_heads = 0
    with pytest.raises(ConfigError, match=r"`num_heads` \(5\) must divide `hidden_size` \(576\)"):
        cfg.num_heads = 5
    with pytest.raises(ConfigError, match="finite"):
        cfg.temperature = float("nan")
    assert cfg == GSWAConfig()
    cfg.num_heads = 4
    assert cfg.num_heads == 4


def test_modes_are_listed_once():
    from gswa_plugin import apply

    assert apply.MODES is MODES
    assert MODES == ("embed", "value", "attn_bias")


def test_misspelled_block_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("gsaw:\n  variant: cosine\n")
    with pytest.raises(ConfigError, match=r"found `gsaw:`; did you mean `gswa:`\?"):
        GSWAConfig.from_yaml(path)


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as info:
        GSWAConfig.from_dict({"varient": "x", "temperature": -1, "num_layers": "two", "summary": "max"})
    assert len(info.value.problems) == 4
    assert "4 problem(s)" in str(info.value)


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        GSWAConfig.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("gswa: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        GSWAConfig.from_yaml(bad)
    noblock = tmp_path / "noblock.yaml"
    noblock.write_text("variant: cosine\n")
    with pytest.raises(ConfigError, match=r"no top-level `gswa:` block"):
        GSWAConfig.from_yaml(noblock)
    notmap = tmp_path / "notmap.yaml"
    notmap.write_text("gswa: 3\n")
    with pytest.raises(ConfigError, match=r"must be a mapping"):
        GSWAConfig.from_yaml(notmap)


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        GSWAConfig(temperature=-1.0)
    with pytest.raises(ConfigError, match="config must be a GSWAConfig, a dict or a path"):
        resolve_config(42)


def test_check_config_lists_field_and_registry_problems_together(tmp_path):
    for given in ({"variant": "selfattn", "num_heads": 0}, {"gswa": {"variant": "selfattn", "num_heads": 0}}):
        with pytest.raises(ConfigError) as info:
            check_config(given)
        text = str(info.value)
        assert len(info.value.problems) == 2 and "`num_heads` must be >= 1" in text and "did you mean `self_attn`?" in text
    path = tmp_path / "g.yaml"
    path.write_text("gswa:\n  variant: selfattn\n  num_heads: 0\n")
    with pytest.raises(ConfigError, match=r"g\.yaml \(2 problem\(s\)\)"):
        check_config(path)


def test_enable_reports_every_problem_before_touching_the_model(internvl_model):
    import gswa_plugin

    before = {k: v.clone() for k, v in internvl_model.state_dict().items()}
    with pytest.raises(ConfigError) as info:
        gswa_plugin.enable(internvl_model, {"variant": "selfattn", "num_heads": 0})
    assert len(info.value.problems) == 2
    assert not gswa_plugin.is_enabled(internvl_model) and not hasattr(internvl_model, "gswa")
    assert all(v.equal(before[k]) for k, v in internvl_model.state_dict().items())
