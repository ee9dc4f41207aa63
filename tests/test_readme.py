"""The README's Python and YAML examples run as written, and its set-up commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_python_and_yaml_examples_run(tmp_path, monkeypatch):
    (yaml_block,) = blocks("yaml")
    (python_block,) = blocks("python")
    assert len(python_block.strip().splitlines()) <= 12
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gswa.yaml").write_text(yaml_block)
    namespace: dict = {}
    exec(compile(python_block, "README.md", "exec"), namespace)
    assert (tmp_path / "gswa_out" / "gswa.safetensors").is_file()
    assert not hasattr(namespace["model"], "gswa")
    assert isinstance(namespace["out"], torch.Tensor)


def test_setup_commands_match_ci():
    commands = [b.strip() for b in blocks("bash") if "python3 -m venv" in b]
    assert any(c.endswith("gswa demo") for c in commands)
    (test_cmd,) = [c for c in commands if c.endswith("python -m pytest -q")]
    ci = (ROOT / ".ci" / "run").read_text()
    install = test_cmd.split("&&")[2].strip()
    assert install in ci and "python -m pytest -q" in ci
