"""``gswa convert-llava``: a tiny llava LLaVA-1.6 (llava's own ``LlavaLlamaForCausalLM``, anyres +
spatial_unpad, a real CLIP tower) with a trained-looking GSWA, converted to transformers'
``LlavaNextForConditionalGeneration``: same logits on the same image + text, GSWA included."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("llava")

import gswa_plugin  # noqa: E402
from gswa_plugin.errors import CheckpointError  # noqa: E402
from gswa_plugin.integrations.llava import enable_on_llava  # noqa: E402
from gswa_plugin.integrations.llava.convert import convert  # noqa: E402
from gswa_plugin.testing.tiny import sample_image, tiny_tokenizer  # noqa: E402
from tests.host_cases.llava_torch import llava_inputs, tiny_llava  # noqa: E402

pytestmark = pytest.mark.llava

GSWA = {"variant": "self_attn", "hidden_size": 32, "num_heads": 4, "num_layers": 1}
IMAGE_INDEX = -200  # llava's IMAGE_TOKEN_INDEX


def _scramble(module: torch.nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for m in module.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.reset_parameters()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(llava model with GSWA, the converted transformers model with the carried GSWA, dst)."""
    root = tmp_path_factory.mktemp("convert-llava")
    model = tiny_llava()
    enable_on_llava(model, GSWA)
    _scramble(model.gswa)
    model.save_pretrained(root / "src")
    tiny_tokenizer().save_pretrained(root / "src")
    gswa_plugin.save(model, root / "src" / "gswa")
    summary = convert(root / "src", root / "dst")
    assert summary["gswa"] and summary["image_token_id"] == tiny_tokenizer().convert_tokens_to_ids("<image>")
    from transformers import LlavaNextForConditionalGeneration

    hf = LlavaNextForConditionalGeneration.from_pretrained(root / "dst").float().eval()
    gswa_plugin.load(hf, root / "dst" / "gswa")
    return model, hf, root / "dst"


def _pairs(model, hf, image_token_id):
    inputs = llava_inputs()
    for row in range(len(inputs["images"])):
        ids = inputs["input_ids"][row][inputs["attention_mask"][row].bool()]
        image, (w, h) = inputs["images"][row], inputs["image_sizes"][row]
        with torch.no_grad():
            ref = model(input_ids=ids[None], images=[image], image_sizes=[(w, h)]).logits[0]
        n = ref.shape[0] - (len(ids) - 1)  # llava spliced n image features in place of one index
        at = int((ids == IMAGE_INDEX).nonzero())
        hf_ids = torch.cat([ids[:at], torch.full((n,), image_token_id), ids[at + 1 :]])
        with torch.no_grad():
            out = hf(input_ids=hf_ids[None], pixel_values=image[None], image_sizes=torch.tensor([[h, w]])).logits[0]
        yield ref, out[:, : ref.shape[-1]], n, (h, w)


def test_converted_logits_equal_llavas_with_gswa(converted):
    model, hf, dst = converted
    assert gswa_plugin.is_enabled(hf)
    grids = set()
    for ref, out, n, size in _pairs(model, hf, hf.config.image_token_index):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        grids.add(n)
    assert len(grids) == 2  # the two photographs get different anyres grids


def test_gswa_acts_on_the_converted_model(converted):
    """The carried GSWA is not inert: disabling it changes the converted model's logits."""
    model, hf, dst = converted
    ref, out, _, _ = next(_pairs(model, hf, hf.config.image_token_index))
    gswa_plugin.disable(hf)
    try:
        _, plain, _, _ = next(_pairs(model, hf, hf.config.image_token_index))
    finally:
        gswa_plugin.load(hf, dst / "gswa")
    assert (plain - out).abs().max() > 1e-3


def test_the_processor_counts_the_image_tokens_the_model_fills(converted):
    """The saved processor expands ``<image>`` to exactly the features llava computes."""
    from transformers import AutoProcessor

    model, hf, dst = converted
    processor = AutoProcessor.from_pretrained(dst)
    photos = [sample_image("astronaut"), sample_image("coffee").resize((300, 100))]  # as llava_inputs()
    for photo, (_, _, n, _) in zip(photos, _pairs(model, hf, hf.config.image_token_index)):
        ids = processor(text="<image> describe the image", images=photo, return_tensors="pt")["input_ids"]
        assert int((ids == hf.config.image_token_index).sum()) == n


def test_the_image_processor_tiles_as_llava_does(converted):
    """The converted image processor gives llava's ``process_images`` views, pixel for pixel
    (square and 3:1 photographs: base image + anyres tiles)."""
    from llava.mm_utils import process_images
    from transformers import AutoProcessor

    from tests.host_cases.llava_torch import image_processor, tiny_llava_config

    processor = AutoProcessor.from_pretrained(converted[2])
    for photo in (sample_image("astronaut"), sample_image("coffee").resize((300, 100))):
        ours = processor.image_processor(photo, return_tensors="pt")["pixel_values"][0]
        llavas = process_images([photo], image_processor(), tiny_llava_config())[0]
        torch.testing.assert_close(ours, llavas, rtol=0, atol=0)


def test_the_chat_template_is_llavas_vicuna_v1_prompt(converted):
    """What lmms-eval's gswa models send: llava's ``conv_vicuna_v1`` rendering of one image question."""
    from llava.conversation import conv_templates
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(converted[2])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], "<image>\nwhat is this?")
    conv.append_message(conv.roles[1], None)
    assert text == conv.get_prompt()


def test_a_non_llava_checkpoint_is_refused_with_the_reason(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}), encoding="utf-8")
    with pytest.raises(CheckpointError, match="not 'llava_llama'"):
        convert(tmp_path, tmp_path / "out")


def test_the_cli_command_converts_and_reports(converted, tmp_path):
    """``gswa convert-llava SRC DST`` writes a loadable checkpoint and carries GSWA."""
    from typer.testing import CliRunner

    from gswa_plugin.cli import app

    src = converted[2].parent / "src"
    result = CliRunner().invoke(app, ["convert-llava", str(src), str(tmp_path / "dst"), "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    assert "gswa: True" in result.output
    assert (tmp_path / "dst" / "gswa" / "gswa.safetensors").is_file()
    from safetensors.torch import load_file

    assert all(t.dtype == torch.bfloat16 for t in load_file(str(tmp_path / "dst" / "model.safetensors")).values())


def test_a_checkpoint_without_tower_weights_takes_them_from_mm_vision_tower(converted, tmp_path):
    """llava checkpoints saved before the tower loaded hold no tower tensors: the converter reads
    them from the folder ``mm_vision_tower`` names, and the result is the same model."""
    import shutil

    from safetensors.torch import load_file, save_file

    src = converted[2].parent / "src"
    bare = tmp_path / "bare"
    shutil.copytree(src, bare)
    state = load_file(str(bare / "model.safetensors"))
    save_file({k: v for k, v in state.items() if ".vision_tower." not in k}, str(bare / "model.safetensors"))
    convert(bare, tmp_path / "dst")
    full, again = (load_file(str(p / "model.safetensors")) for p in (converted[2], tmp_path / "dst"))
    assert full.keys() == again.keys()
    assert all(torch.equal(full[k], again[k]) for k in full)
