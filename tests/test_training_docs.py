"""The Python example of docs/training.md runs as written."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "training_api.py"


def test_training_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), str(tmp_path)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/test_training.py
    try:
        runpy.run_path(str(EXAMPLE), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "gswa/max_min_ratio" in out and "gswa.safetensors" in out
    assert (tmp_path / "out" / "checkpoint-2" / "gswa" / "gswa.safetensors").is_file()
