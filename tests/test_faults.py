"""Fault injection: kills mid-run, damaged files, bad data, broken plugins.

Each fault must end in a clear error (naming the input and the fix) or a correct recovery, and no
good file may be lost. CI-sized: two `gswa train` processes killed by PID (run side by side), the
rest in-process on the tiny InternVL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import gswa_plugin
from gswa_plugin import checkpoint, hookimpl, plugins
from gswa_plugin.cli import app
from gswa_plugin.errors import CheckpointError, DataError, NonFiniteError, PluginError, PluginLoadError
from gswa_plugin.integrations.transformers import TrainConfig, build_trainer, smoke, train, unwrap
from gswa_plugin.integrations.transformers.checkpoints import STAGING_DIR, checkpoint_problem, find_resume_checkpoint
from gswa_plugin.integrations.transformers.data import ConversationDataset
from gswa_plugin.testing.tiny import tiny_internvl

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# --- kills mid-run --------------------------------------------------------------------------------
#: Runs `gswa train`, blocking (so the test can kill it by PID) in a checkpoint write or in a step.
_RUNNER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    marker, where, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
    import gswa_plugin.integrations.transformers.trainer as tr

    def block():
        Path(marker).write_text(str(os.getpid()))
        time.sleep(600)

    if where == "save":  # the host's weights of checkpoint-<step> are written, GSWA's are not yet
        original = tr.save_gswa_with_state
        def save_gswa_with_state(model, out, state_dict):
            if f"checkpoint-{step}" in str(out):
                block()
            return original(model, out, state_dict)
        tr.save_gswa_with_state = save_gswa_with_state
    else:  # in the middle of the optimizer step after <step>
        original = tr.GSWATrainer.training_step
        def training_step(self, *args, **kwargs):
            if self.state.global_step == step:
                block()
            return original(self, *args, **kwargs)
        tr.GSWATrainer.training_step = training_step
    from gswa_plugin.cli import main
    sys.argv = ["gswa", "train", *sys.argv[4:]]
    main()
    """
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    model_dir = smoke.write_model(root / "model")
    files = smoke.write_data(root / "data", formats=("llava",))
    return root, model_dir, files


def _recipe(setup, out: Path) -> dict:
    _, model_dir, files = setup
    rec = smoke.smoke_recipe(model_dir, files, out)
    rec["training_args"].update({"max_steps": 6, "save_steps": 2})
    return rec


def _start_killable(setup, name: str, where: str, step: int) -> tuple[subprocess.Popen, Path, Path]:
    root = setup[0]
    out = root / name
    recipe = root / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(setup, out)), encoding="utf-8")
    runner = root / "runner.py"
    runner.write_text(_RUNNER, encoding="utf-8")
    marker = root / f"{name}.blocked"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GSWA_PLUGINS": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(runner), str(marker), where, str(step), str(recipe)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc, marker, out


def _kill_when_blocked(proc: subprocess.Popen, marker: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"gswa train exited ({proc.returncode}) before the fault point:\n{proc.stdout.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("gswa train did not reach the fault point in time")
        time.sleep(0.1)
    os.kill(int(marker.read_text()), signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()


def test_killed_runs_resume_from_the_newest_complete_checkpoint(setup, tmp_path, caplog):
    # two `gswa train` processes, killed by PID: one while writing checkpoint-4, one inside step 4
    in_save = _start_killable(setup, "killed_in_save", "save", 4)
    in_step = _start_killable(setup, "killed_in_step", "step", 3)
    reference = train(TrainConfig.from_dict(_recipe(setup, tmp_path / "reference")))  # uninterrupted, meanwhile
    want = unwrap(reference.model).gswa.state_dict()
    _kill_when_blocked(*in_save[:2])
    _kill_when_blocked(*in_step[:2])

    # killed while writing checkpoint-4: it never appeared under its final name
    out = in_save[2]
    assert (out / STAGING_DIR / "checkpoint-4").is_dir()
    assert not (out / "checkpoint-4").exists()
    assert checkpoint_problem(out / "checkpoint-2") is None
    good = _digest(out / "checkpoint-2")

    # `gswa train --resume latest` skips it, says which and why, and ends where the uninterrupted run ended
    with caplog.at_level(logging.WARNING, logger="gswa_plugin.integrations.transformers"):
        resumed = train(TrainConfig.from_dict(_recipe(setup, out)), resume_from_checkpoint=True)
    log = caplog.text
    assert f"skipping {out / STAGING_DIR / 'checkpoint-4'}: its write was interrupted" in log
    assert f"resuming from {out / 'checkpoint-2'}" in log
    assert resumed.state.global_step == 6
    got = unwrap(resumed.model).gswa.state_dict()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7)
    assert _digest(out / "checkpoint-2") == good  # no good file lost
    assert checkpoint_problem(out / "checkpoint-6") is None and not (out / STAGING_DIR).exists()

    # damage of other kinds (a stock Trainer killed mid-write: no trainer_state.json; truncated weights)
    (out / "checkpoint-8").mkdir()
    (out / "checkpoint-7").mkdir()
    for f in (out / "checkpoint-6").iterdir():
        if f.is_file() and f.name != "trainer_state.json":
            (out / "checkpoint-8" / f.name).write_bytes(f.read_bytes())
        if f.is_file():
            data = f.read_bytes()
            (out / "checkpoint-7" / f.name).write_bytes(data[: len(data) // 2] if f.suffix == ".safetensors" else data)
    found, skipped = find_resume_checkpoint(out)
    assert found == out / "checkpoint-6"
    reasons = {p.name: why for p, why in skipped}
    assert "no trainer_state.json" in reasons["checkpoint-8"]
    assert "truncated or damaged" in reasons["checkpoint-7"]

    # killed inside a step: the last complete checkpoint resumes to the same end
    out = in_step[2]
    found, skipped = find_resume_checkpoint(out)
    assert found == out / "checkpoint-2" and skipped == []
    resumed = train(TrainConfig.from_dict(_recipe(setup, out)), resume_from_checkpoint=True)
    got = unwrap(resumed.model).gswa.state_dict()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7)


def test_resume_without_a_complete_checkpoint_is_a_clear_error(setup, tmp_path):
    out = tmp_path / "empty"
    (out / "checkpoint-2").mkdir(parents=True)
    trainer = build_trainer(TrainConfig.from_dict(_recipe(setup, out)))
    with pytest.raises(CheckpointError, match=r"no complete checkpoint in .*checkpoint-2: it has no trainer_state"):
        trainer.train(resume_from_checkpoint=True)
    with pytest.raises(CheckpointError, match=r"cannot resume from .*checkpoint-2: it has no trainer_state"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))


# --- damaged GSWA checkpoints ---------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    model = tiny_internvl(image_size=56)
    gswa_plugin.enable(model)
    with torch.no_grad():
        for p in model.gswa.parameters():
            p.add_(0.01)
    return gswa_plugin.save(model, tmp_path / "good"), model


def _truncate(d):
    p = d / checkpoint.WEIGHTS_FILE
    p.write_bytes(p.read_bytes()[:200])


def _garbage(d):
    (d / checkpoint.WEIGHTS_FILE).write_bytes(b"not a safetensors file at all")


def _flip_bytes(d):
    p = d / checkpoint.WEIGHTS_FILE
    data = bytearray(p.read_bytes())
    data[-40:-8] = b"\x7f" * 32
    p.write_bytes(bytes(data))


def _nan_with_valid_header(d):
    p = d / checkpoint.WEIGHTS_FILE
    state = load_file(str(p))
    state["scorer.up.weight"][0, 0] = float("nan")
    save_file(state, str(p))  # no checksum: an older or foreign file


def _edit_saved(key, value):
    def edit(d):
        p = d / checkpoint.CONFIG_FILE
        data = yaml.safe_load(p.read_text())
        data["saved"][key] = value
        p.write_text(yaml.safe_dump(data))

    return edit


def _bad_yaml(d):
    (d / checkpoint.CONFIG_FILE).write_text("gswa: [unclosed\n")


@pytest.mark.parametrize(
    "damage, message",
    [
        (_truncate, r"gswa\.safetensors is not a readable safetensors file"),
        (_garbage, r"gswa\.safetensors is not a readable safetensors file"),
        (_flip_bytes, r"gswa\.safetensors is damaged: its tensors do not match the checksum"),
        (_nan_with_valid_header, r"gswa\.safetensors holds NaN or inf in scorer\.up\.weight"),
        (_edit_saved("format_version", 99), r"format_version` is 99 but this gswa-plugin .* upgrade gswa-plugin"),
        (_edit_saved("summary_dim", "abc"), r"`saved\.summary_dim` must be a whole number >= 1 .* got 'abc'"),
        (_bad_yaml, r"gswa_config\.yaml is not valid YAML"),
    ],
    ids=["truncated", "garbage", "flipped-bytes", "nan", "format-99", "summary-dim-abc", "bad-yaml"],
)
def test_damaged_checkpoint_is_refused_and_the_model_is_untouched(saved, damage, message):
    directory, trained = saved
    damage(directory)
    fresh = tiny_internvl(image_size=56)
    with pytest.raises(CheckpointError, match=message):
        gswa_plugin.load(fresh, directory)
    assert not gswa_plugin.is_enabled(fresh)  # a retried enable works
    gswa_plugin.enable(fresh)
    before = {k: v.clone() for k, v in trained.gswa.state_dict().items()}
    with pytest.raises(CheckpointError, match=message):
        gswa_plugin.load(trained, directory)  # into an enabled model: its weights stay as they were
    for k, v in trained.gswa.state_dict().items():
        assert torch.equal(v, before[k])


def test_weights_that_do_not_fit_leave_an_enabled_model_as_it_was(saved, tmp_path):
    directory, trained = saved
    state = load_file(str(directory / checkpoint.WEIGHTS_FILE))
    state["scorer.up.weight"] = state["scorer.up.weight"][:, :-1].clone()
    save_file(state, str(directory / checkpoint.WEIGHTS_FILE))
    before = {k: v.clone() for k, v in trained.gswa.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"do not fit the module: scorer\.up\.weight has shape"):
        gswa_plugin.load(trained, directory)
    for k, v in trained.gswa.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize(
    "state_dict, message",
    [
        ({}, r"the state_dict given to save\(\) does not fit the enabled GSWA \(missing "),
        ("wrong-shape", r"has shape \(1,\), the module's is"),
        ("nan", r"NaN or inf in scorer\.up\.weight"),
    ],
)
def test_a_save_that_does_not_fit_never_replaces_a_good_checkpoint(saved, state_dict, message):
    directory, trained = saved
    good = _digest(directory)
    if state_dict == "wrong-shape":
        state_dict = {k: v.clone() for k, v in trained.gswa.state_dict().items()}
        state_dict["scorer.up.bias"] = torch.zeros(1)
    elif state_dict == "nan":
        state_dict = {k: v.clone() for k, v in trained.gswa.state_dict().items()}
        state_dict["scorer.up.weight"][0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"not saving to .*good: " + ".*" + message):
        gswa_plugin.save(trained, directory, state_dict=state_dict)
    assert _digest(directory) == good


def test_save_to_a_file_is_refused(saved, tmp_path):
    _, trained = saved
    (tmp_path / "a_file").write_text("keep me")
    with pytest.raises(CheckpointError, match=r"not saving to .*a_file: it is a file"):
        gswa_plugin.save(trained, tmp_path / "a_file")
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_a_save_interrupted_mid_write_keeps_the_old_files(saved, monkeypatch):
    directory, trained = saved
    good = _digest(directory)

    def dies_mid_write(state, path, metadata=None):
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt  # what a kill looks like to the code after it

    monkeypatch.setattr(checkpoint, "save_file", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        gswa_plugin.save(trained, directory)
    assert _digest(directory) == good  # no temporary file left behind either
    fresh = tiny_internvl(image_size=56)
    gswa_plugin.load(fresh, directory)


# --- bad training data ----------------------------------------------------------------------------
def _image_files(root: Path) -> None:
    (root / "images" / "text.jpg").write_text("this is not an image")
    (root / "images" / "empty.png").write_bytes(b"")
    data = (root / "images" / "coffee.jpg").read_bytes()
    (root / "images" / "cut.jpg").write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from gswa_plugin.testing.tiny import tiny_internvl_processor

    root = tmp_path_factory.mktemp("baddata")
    smoke.write_data(root, formats=("llava",))
    _image_files(root)
    good = [json.loads(line) for line in (root / "train_llava.jsonl").read_text().splitlines()]
    return root, good, tiny_internvl_processor(image_size=56, max_patches=6)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"image": "images/text.jpg"}, r"bad\.jsonl:2 \(id 'x'\): image .*text\.jpg is unusable: it cannot be read"),
        (
            {"image": "images/empty.png"},
            r"bad\.jsonl:2 \(id 'x'\): image .*empty\.png is unusable: it is an empty file",
        ),
        ({"image": "images/cut.jpg"}, r"bad\.jsonl:2 \(id 'x'\): image .*cut\.jpg is unusable: .*truncated"),
        ({"image": 5}, r"bad\.jsonl:2: `image` must be an image path or a list of image paths"),
        (
            {"conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": {"a": 1}}]},
            r"bad\.jsonl:2: turn 1 of `conversations` has a `value` of type dict",
        ),
        ({"id": {"a": 1}}, r"bad\.jsonl:2: `id` must be a string or a number"),
    ],
    ids=["not-an-image", "empty-png", "truncated-jpeg", "image-int", "value-dict", "id-dict"],
)
def test_bad_records_fail_when_the_dataset_is_built(data, tmp_path, change, message):
    root, good, processor = data
    bad = {**good[1], "id": "x", **change}
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (good[0], bad, good[2])) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message):
        ConversationDataset([path], processor, template="plain", image_root=root)


def test_unreadable_images_can_be_skipped_and_counted(data, tmp_path):
    root, good, processor = data
    recs = [good[0], {**good[1], "image": "images/cut.jpg"}, good[2]]
    path = tmp_path / "skip.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n", encoding="utf-8")
    ds = ConversationDataset([path], processor, template="plain", image_root=root, on_missing_image="skip")
    assert len(ds) == 2 and len(ds.skipped) == 1 and "skip.jsonl:2" in ds.skipped[0]


def test_a_byte_order_mark_is_read(data, tmp_path):
    root, good, processor = data
    path = tmp_path / "bom.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in good) + "\n", encoding="utf-8-sig")
    assert len(ConversationDataset([path], processor, template="plain", image_root=root)) == len(good)


def test_invalid_utf8_names_file_and_line(data, tmp_path):
    root, good, processor = data
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(good[0]).encode() + b"\n" + '{"id": "caf\xe9"}'.encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=r"latin1\.jsonl:2: not valid UTF-8"):
        ConversationDataset([path], processor, template="plain", image_root=root)


def test_max_length_that_cuts_every_answer_is_an_error(data, tmp_path):
    root, good, processor = data
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps(good[0]) + "\n", encoding="utf-8")  # 300x100 px: few image tokens
    with pytest.raises(DataError, match=r"`data.max_length` \(20\) cuts off every answer .* needs \d+ tokens"):
        ConversationDataset([path], processor, template="plain", image_root=root, max_length=20)


# --- broken plugins -------------------------------------------------------------------------------
_PLUGINS = {
    "typo_gswa": """
        from gswa_plugin import hookimpl

        @hookimpl
        def gswa_proces_tiles(batch, handle):
            return None
        """,
    "raises_gswa": """
        from gswa_plugin import hookimpl

        @hookimpl
        def gswa_weights_computed(weights, batch, handle):
            raise KeyError("no such tile")
        """,
    "nan_gswa": """
        import torch
        from torch import nn
        from gswa_plugin import hookimpl

        class NaNScorer(nn.Module):
            def __init__(self, d, cfg):
                super().__init__()
            def forward(self, tokens, mask):
                return torch.full(mask.shape, float("nan"))

        @hookimpl
        def gswa_register_variants(register):
            register("nan_variant", NaNScorer)
        """,
    "noweights_gswa": """
        from gswa_plugin import hookimpl

        @hookimpl(tryfirst=True)
        def gswa_process_tiles(batch, handle):
            return batch
        """,
    "shape_gswa": """
        import torch
        from torch import nn
        from gswa_plugin import hookimpl

        class WrongShape(nn.Module):
            def __init__(self, d, cfg):
                super().__init__()
            def forward(self, tokens, mask):
                return torch.zeros(3, 7, 11)

        @hookimpl
        def gswa_register_variants(register):
            register("wrong_shape", WrongShape)
        """,
    "import_gswa": "raise RuntimeError('boom at import')\n",
}


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """Fake installed distributions, one per broken plugin, in entry-point group `gswa`."""
    for dist, source in _PLUGINS.items():
        (tmp_path / f"{dist}_mod.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{dist}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[gswa]\n{dist} = {dist}_mod\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def use(name: str) -> None:
        monkeypatch.setenv("GSWA_PLUGINS", name)
        plugins.reset_plugin_manager()

    yield use
    for dist in _PLUGINS:
        sys.modules.pop(f"{dist}_mod", None)


def _forward(model, inputs):
    with torch.no_grad():
        return model(**inputs)


def test_misspelt_hook_is_named_with_the_right_name(installed):
    installed("typo_gswa")
    with pytest.raises(
        PluginLoadError,
        match=r"plugin 'typo_gswa' .* implements `gswa_proces_tiles` \(did you mean `gswa_process_tiles`\?\)",
    ):
        plugins.variant_names()


def test_misspelt_hook_registered_in_code_does_not_block_later_use(internvl_model):
    class Typo:
        @hookimpl
        def gswa_weights_computd(self, weights):
            pass

    with pytest.raises(PluginLoadError, match=r"did you mean `gswa_weights_computed`"):
        plugins.register_plugin(Typo(), name="typo")
    plugins.register_plugin(type("Fine", (), {})(), name="fine")  # the manager is still usable
    gswa_plugin.enable(internvl_model)


def test_exception_in_a_plugin_hook_names_the_plugin(installed, internvl_model, internvl_inputs):
    installed("raises_gswa")
    gswa_plugin.enable(internvl_model)
    with pytest.raises(
        PluginError, match=r"plugin 'raises_gswa' raised KeyError in its `gswa_weights_computed` hook"
    ) as info:
        _forward(internvl_model, internvl_inputs)
    assert isinstance(info.value.__cause__, KeyError) and info.value.plugin == "raises_gswa"


def test_non_finite_weights_of_a_plugin_variant_are_an_error(installed, internvl_model, internvl_inputs):
    installed("nan_gswa")
    gswa_plugin.enable(internvl_model, {"variant": "nan_variant"})
    with pytest.raises(NonFiniteError, match=r"variant 'nan_variant' \(registered by plugin 'nan_gswa'\)"):
        _forward(internvl_model, internvl_inputs)


def test_a_plugin_variant_that_raises_is_named(installed, internvl_model, internvl_inputs):
    installed("shape_gswa")
    gswa_plugin.enable(internvl_model, {"variant": "wrong_shape"})
    with pytest.raises(PluginError, match=r"the variant 'wrong_shape' \(plugin 'shape_gswa'\) raised RuntimeError"):
        _forward(internvl_model, internvl_inputs)


def test_a_failed_enable_leaves_the_model_as_it_was(internvl_model, internvl_inputs):
    class BrokenFactory:
        @hookimpl
        def gswa_register_variants(self, register):
            register("broken_factory", lambda d, cfg: 1 / 0)

    plugins.register_plugin(BrokenFactory(), name="broken_factory_plugin")
    keys = set(internvl_model.state_dict())
    attrs = set(vars(internvl_model))
    before = _forward(internvl_model, internvl_inputs).logits
    with pytest.raises(PluginError, match=r"variant 'broken_factory' \(plugin 'broken_factory_plugin'\) raised"):
        gswa_plugin.enable(internvl_model, {"variant": "broken_factory"})
    assert not gswa_plugin.is_enabled(internvl_model)
    assert set(internvl_model.state_dict()) == keys and set(vars(internvl_model)) == attrs
    assert torch.equal(_forward(internvl_model, internvl_inputs).logits, before)
    gswa_plugin.enable(internvl_model)  # a retried enable works


def test_plugin_returning_no_weights_is_an_error(installed, internvl_model, internvl_inputs):
    installed("noweights_gswa")
    gswa_plugin.enable(internvl_model)
    with pytest.raises(PluginError, match=r"plugin 'noweights_gswa' returned a batch without weights"):
        _forward(internvl_model, internvl_inputs)


def test_check_with_a_broken_plugin_prints_a_message_not_a_traceback(installed, tmp_path):
    installed("import_gswa")
    cfg = tmp_path / "gswa.yaml"
    cfg.write_text("gswa:\n  variant: cosine\n")
    res = CliRunner().invoke(app, ["check", str(cfg)], env={"GSWA_PLUGINS": "import_gswa", "COLUMNS": "300"})
    assert res.exit_code == 1, res.output
    assert "plugin 'import_gswa' (import_gswa_mod) failed to load: RuntimeError: boom at import" in res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
