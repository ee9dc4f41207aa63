"""GSWAConfig: YAML and dict loading, and every validation error, checked by message."""

from __future__ import annotations

import dataclasses

import pytest

from gswa_plugin import ConfigError, GSWAConfig
from gswa_plugin.config import default_config_path, field_docs, resolve_config


def test_defaults_and_every_field_documented():
    cfg = GSWAConfig()
    assert cfg.variant == "self_attn" and cfg.mode == "embed"
    for f in dataclasses.fields(GSWAConfig):
        assert f.metadata.get("help"), f"field {f.name} has no help text"
    assert [d[0] for d in field_docs()] == [f.name for f in dataclasses.fields(GSWAConfig)]


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
    with pytest.raises(ConfigError, match=r"`min_weight` must be < 1.0"):
        GSWAConfig.from_dict({"min_weight": 1.5})
    with pytest.raises(ConfigError, match=r"`summary` must be one of 'auto', 'cls', 'mean'; got 'max'"):
        GSWAConfig.from_dict({"summary": "max"})
    with pytest.raises(ConfigError, match=r"`variant` must be one of .*'self_attn'.*got 'self_atn'; did you mean `self_attn`\?"):
        GSWAConfig.from_dict({"variant": "self_atn"})
    with pytest.raises(ConfigError, match=r"`adapter` must be one of .*'internvl'.*got 'intervl'; did you mean `internvl`\?"):
        GSWAConfig.from_dict({"adapter": "intervl"})
    with pytest.raises(ConfigError, match=r"`num_heads` \(3\) must divide `hidden_size` \(100\)"):
        GSWAConfig.from_dict({"hidden_size": 100, "num_heads": 3})


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
