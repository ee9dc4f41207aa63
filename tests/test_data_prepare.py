"""The recipe's data-preparation script builds a mix the trainer reads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from gswa_plugin.integrations.transformers.data import ConversationDataset
from gswa_plugin.integrations.transformers.smoke import write_data
from gswa_plugin.testing.tiny import tiny_internvl_processor

SCRIPT = Path(__file__).resolve().parents[1] / "recipes/internvl2-2b/transformers/prepare_data.py"


def _script():
    spec = importlib.util.spec_from_file_location("prepare_data", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def sources(tmp_path):
    d = tmp_path / "src"
    llava, messages = write_data(d)
    extra = [
        {"id": "text", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "a"}]},
        {"id": "gone", "image": "images/gone.jpg",
         "conversations": [{"from": "human", "value": "<image> what ?"}, {"from": "gpt", "value": "a"}]},
    ]
    with llava.open("a", encoding="utf-8") as f:
        for r in extra:
            f.write(json.dumps(r) + "\n")
    return d, llava, messages


def test_mix_is_drawn_checked_and_readable(sources, tmp_path, capsys):
    d, llava, messages = sources
    out = tmp_path / "mix.jsonl"
    rc = _script().main(["--source", f"a={llava}:{d}", "--source", f"b={messages}:{d}:2", "--total", "5",
                         "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "a: text-only, left out: 1" in printed and "a: missing image, left out: 1" in printed
    lines = out.read_text().splitlines()
    assert len(lines) == 5
    ids = [json.loads(l)["id"] for l in lines]
    assert sum(i.startswith("b:") for i in ids) == 2 and sum(i.startswith("a:") for i in ids) == 3
    ds = ConversationDataset([out], tiny_internvl_processor(image_size=56, max_patches=6), template="plain")
    assert len(ds) == 5 and "pixel_values" in ds[0]


def test_a_malformed_source_line_is_named(sources, tmp_path, capsys):
    d, llava, _ = sources
    with llava.open("a", encoding="utf-8") as f:
        f.write("{not json\n")
    rc = _script().main(["--source", f"a={llava}:{d}", "--out", str(tmp_path / "m.jsonl")])
    assert rc == 2
    assert "train_llava.jsonl:7: not valid JSON" in capsys.readouterr().err
