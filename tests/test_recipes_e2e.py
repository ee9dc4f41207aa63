"""The pieces of the SleighVL baseline -> train -> evaluate sequence that run without lmms-eval.

The sequence itself runs in CI step ``.ci/steps/55-sleighvl-e2e.sh`` (``recipes/internvl2-2b/e2e.py``,
one run per framework, in the lmms-eval and lmms-engine environments). Here: every command of
each README's block is one the tiny run knows (so a README edit that the CI run would not
follow fails here first), the data script's lmms-engine format, and the checks of the
lmms-engine merge.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import gswa_plugin
from gswa_plugin.errors import CheckpointError
from gswa_plugin.integrations.lmms_engine.merge import check_against_saved, split_gswa
from gswa_plugin.integrations.transformers.data import iter_raw_records, parse_record
from gswa_plugin.integrations.transformers.smoke import write_data
from gswa_plugin.testing.tiny import tiny_internvl

RECIPES = Path(__file__).resolve().parents[1] / "recipes/internvl2-2b"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


e2e = _load("sleighvl_e2e", RECIPES / "e2e.py")
prepare = _load("prepare_data", RECIPES / "transformers/prepare_data.py")


@pytest.mark.parametrize("framework", sorted(e2e.READMES))
def test_every_readme_command_is_run_by_the_tiny_sequence(framework, tmp_path):
    py = {"eval": "/eval/python", "engine": "/engine/python"}
    commands = e2e.readme_commands(e2e.READMES[framework])
    runs = [e2e.tiny_command(cmd, tmp_path, py) for cmd in commands]
    skipped = [cmd for cmd, (run, _) in zip(commands, runs) if run is None]
    assert all(cmd.startswith("pip install") for cmd in skipped)
    ran = [run for run, _ in runs if run is not None]
    assert not any("/models/" in r and str(tmp_path) not in r for r in ran)
    evals = [r for r in ran if "-m lmms_eval " in r]
    assert [r for r in ran if "paper_metrics.py" in r][-1].count("--trained") == 1
    if framework == "llava":
        # convert the starting checkpoint and the trained one; one run of all three benchmarks each
        assert ran[0].startswith("M=") and sum(r.startswith("gswa convert-llava ") for r in ran) == 2
        assert len(evals) == 2 and all(r.startswith("/eval/python ") and r.endswith("--device cpu") for r in evals)
        assert ["gswa=none" in evals[0], "gswa=$R/gswa" in evals[1]] == [True, True]
        train = [r for r in ran if "finetune_gswa.sh" in r]
        assert len(train) == 1 and f"PATH={tmp_path / 'bin'}:$PATH" in train[0]  # the CPU `deepspeed`
        return
    assert ran[0].startswith("M=") and any(r.startswith("gswa convert-internvl2 ") for r in ran)
    # baseline and trained model, each at 6 tiles (MME, RealWorldQA) and 24 (OCRBench), on CPU
    assert len(evals) == 4 and all(r.startswith("/eval/python ") and r.endswith("--device cpu") for r in evals)
    assert [("max_tiles=6" in r, "max_tiles=24" in r) for r in evals] == [(True, False), (False, True)] * 2
    if framework == "lmms-engine":
        assert any("tests.hosts_lmms_engine.cpu_launch" in r for r in ran)
        assert any(r.startswith("/engine/python -m gswa_plugin.integrations.lmms_engine.merge") for r in ran)
        assert any("--format messages" in r for r in ran)


def test_an_unknown_readme_command_stops_the_tiny_run(tmp_path):
    with pytest.raises(SystemExit, match="does not know"):
        e2e.tiny_command("deepspeed train.py", tmp_path, {"eval": "e", "engine": "x"})


def test_messages_format_is_what_lmms_engine_reads(tmp_path):
    src = tmp_path / "src"
    llava = write_data(src, formats=("llava",))[0]
    two = {"id": "two", "image": ["images/coffee.jpg", "images/chelsea.jpg"],
           "conversations": [{"from": "human", "value": "<image>\n compare <image> them "}, {"from": "gpt", "value": "a cup"}]}  # fmt: skip
    with llava.open("a", encoding="utf-8") as f:
        f.write(json.dumps(two) + "\n")
    out = tmp_path / "mix.jsonl"
    assert prepare.main(["--source", f"a={llava}:{src}", "--format", "messages", "--out", str(out)]) == 0
    recs = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(recs) == 5 and all(set(r) == {"id", "messages"} for r in recs.values())
    user = recs["a:two"]["messages"][0]["content"]
    assert [p["type"] for p in user] == ["image_url", "text", "image_url", "text"]
    assert [p.get("text") for p in user] == [None, "compare", None, "them"]  # stripped, as InternVL does
    assert [Path(p["image_url"]["url"]).name for p in user if p["type"] == "image_url"] == ["coffee.jpg", "chelsea.jpg"]
    assert all(Path(p["image_url"]["url"]).is_absolute() for p in user if p["type"] == "image_url")
    assert recs["a:two"]["messages"][1] == {"role": "assistant", "content": [{"type": "text", "text": "a cup"}]}
    # the trainer's own parser reads the file back with the images in order
    for where, obj in iter_raw_records(out):
        rec = parse_record(obj, where, tmp_path)
        assert len(rec.images) == sum(t.text.count("<image>") for t in rec.turns) >= 1


def test_merge_sets_gswa_aside_only_when_it_matches_the_saved_copy(tmp_path):
    model = tiny_internvl(image_size=56)
    gswa_plugin.enable(model, {"variant": "self_attn", "hidden_size": 32, "num_heads": 2, "num_layers": 1})
    gswa_plugin.save(model, tmp_path / "gswa")
    host, gswa = split_gswa(model.state_dict())
    assert gswa and not any(k.startswith("gswa.") for k in host)
    assert len(host) + len(gswa) == len(model.state_dict())
    check_against_saved(gswa, tmp_path / "gswa")
    changed = dict(gswa)
    key = next(iter(changed))
    changed[key] = changed[key] + 1
    with pytest.raises(CheckpointError, match="differs"):
        check_against_saved(changed, tmp_path / "gswa")
    with pytest.raises(CheckpointError, match="different GSWA parameters"):
        check_against_saved({**gswa, "extra": torch.zeros(1)}, tmp_path / "gswa")
    with pytest.raises(CheckpointError, match="missing"):
        check_against_saved(gswa, tmp_path / "nowhere")


def test_the_cpu_deepspeed_stand_in_drops_gpu_and_llava_next_only_arguments(monkeypatch):
    """What ``finetune_gswa.sh`` hands ``deepspeed`` becomes one CPU process of the same module."""
    launch = _load("llava_cpu_launch", RECIPES.parent / "llava-next/llava/cpu_launch.py")
    monkeypatch.setenv("LLAVA_TINY_TOWER", "/tiny/clip")
    argv = ["--num_gpus", "8", "--module", "gswa_plugin.integrations.llava.train", "--gswa_config", "g.yaml",
            "--deepspeed", "zero3.json", "--image_grid_pinpoints", "[(336, 672)]", "--mm_tunable_parts", "a,b",
            "--bf16", "True", "--learning_rate", "1e-5"]  # fmt: skip
    module, args, dropped, extra = launch.translate(argv)
    assert module == "gswa_plugin.integrations.llava.train"
    assert dropped == argv[:2] + argv[6:12]
    assert args == argv[4:6] + argv[12:] + extra and extra[-2:] == ["--vision_tower", "/tiny/clip"]
    assert args[args.index("--bf16", 4) + 1] == "False"  # argparse keeps the last value
    with pytest.raises(SystemExit, match="--module"):
        launch.translate(["train.py"])


def test_parquet_export_writes_what_the_trainer_reads(tmp_path):
    """A shard in LLaVA-OneVision-Data's layout (features id, image, conversations, data_source, as
    its dataset card lists), written by `datasets`, exported and read back by the trainer's parser."""
    datasets = pytest.importorskip("datasets", reason="runs where datasets/pyarrow are (CI step 55: the lmms-eval env)")
    import numpy as np

    from gswa_plugin.testing.tiny import sample_image

    export = _load("export_parquet", RECIPES.parent / "export_parquet.py")
    photos = [sample_image("coffee").resize((60, 40)), sample_image("chelsea").resize((30, 50)), None]
    conv = [{"from": datasets.Value("string"), "value": datasets.Value("string")}]  # the card's `list:` of structs
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(),
                                  "conversations": conv, "data_source": datasets.Value("string")})  # fmt: skip
    turns = [[{"from": "human", "value": f"<image>\nq{i}"}, {"from": "gpt", "value": f"a{i}"}] for i in range(3)]
    turns[2][0]["value"] = "text only"
    ds = datasets.Dataset.from_dict(
        {"id": ["r0", "r1", "r2"], "image": photos, "conversations": turns, "data_source": ["x"] * 3}, features=features
    )
    shard = tmp_path / "train-00000-of-00001.parquet"
    ds.to_parquet(str(shard))
    out = tmp_path / "out"
    assert export.main([str(shard), "--out", str(out), "--id-prefix", "ov:"]) == 0
    recs = [json.loads(line) for line in (out / "train_llava.jsonl").read_text().splitlines()]
    assert [r["id"] for r in recs] == ["ov:r0", "ov:r1", "ov:r2"] and "image" not in recs[2]
    assert recs[0]["conversations"] == turns[0]
    from PIL import Image

    for rec, photo in zip(recs[:2], photos[:2]):
        assert np.array_equal(np.asarray(Image.open(out / rec["image"]).convert("RGB")), np.asarray(photo.convert("RGB")))
    parsed = [parse_record(obj, where, out) for where, obj in iter_raw_records(out / "train_llava.jsonl")]
    assert [len(p.images) for p in parsed] == [1, 1, 0] and all(p.images[0].is_file() for p in parsed[:2])
    bad = tmp_path / "bad.parquet"
    datasets.Dataset.from_dict({"text": ["x"]}).to_parquet(str(bad))
    with pytest.raises(SystemExit, match="no column"):
        export.main([str(bad), "--out", str(tmp_path / "bad")])


def test_a_json_out_path_gets_one_list_as_llava_reads(tmp_path):
    src = tmp_path / "src"
    llava = write_data(src, formats=("llava",))[0]
    out = tmp_path / "mix.json"
    assert prepare.main(["--source", f"a={llava}:{src}", "--out", str(out)]) == 0
    data = json.loads(out.read_text())  # what llava.train.train.LazySupervisedDataset does
    # one image per record: a string, which the original LLaVA code joins to its image folder
    assert isinstance(data, list) and len(data) == 4 and all(Path(r["image"]).is_absolute() for r in data)


def test_the_trained_model_check_needs_moved_weights_and_gswa(tmp_path):
    from safetensors.torch import save_file

    base, run = tmp_path / "base", tmp_path / "run"
    for d in (base, run, run / "gswa"):
        d.mkdir()
    weights = {"model.vision_tower.w": torch.ones(2), "model.language_model.w": torch.ones(2)}
    save_file(weights, str(base / "model.safetensors"))
    save_file(weights, str(run / "model.safetensors"))
    with pytest.raises(SystemExit, match="0 host tensors moved"):
        e2e.check_trained(base, run)
    save_file({**weights, "model.language_model.w": torch.full((2,), 2.0)}, str(run / "model.safetensors"))
    with pytest.raises(SystemExit, match="GSWA saved: False"):
        e2e.check_trained(base, run)
    (run / "gswa" / "gswa.safetensors").write_bytes(b"")
    assert "1 of 2 host tensors moved" in e2e.check_trained(base, run)
    assert "1 of 1 vision-tower tensors unchanged" in e2e.check_trained(base, run)
