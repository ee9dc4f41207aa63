"""Conversation data: both formats, prompt masking, tiling as at inference, and errors by message."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from gswa_plugin.errors import DataError
from gswa_plugin.integrations.transformers.data import IGNORE_INDEX, ConversationCollator, ConversationDataset
from gswa_plugin.integrations.transformers.smoke import write_data
from gswa_plugin.testing.tiny import tiny_internvl_processor


@pytest.fixture(scope="module")
def processor():
    return tiny_internvl_processor(image_size=56, max_patches=6)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_data(d)
    return d


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_llava_and_messages_formats_encode_identically(processor, data_dir):
    a = ConversationDataset([data_dir / "train_llava.jsonl"], processor, template="plain")
    b = ConversationDataset([data_dir / "train_messages.jsonl"], processor, template="plain")
    assert len(a) == len(b) == 4
    for i in range(4):
        x, y = a[i], b[i]
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"])
        torch.testing.assert_close(x["pixel_values"], y["pixel_values"])


def test_only_the_answer_is_labelled(processor, data_dir):
    ds = ConversationDataset([data_dir / "train_llava.jsonl"], processor, template="plain")
    item = ds[0]
    tok = processor.tokenizer
    labelled = [int(t) for t in item["labels"] if t != IGNORE_INDEX]
    assert tok.convert_ids_to_tokens(labelled) == ["a", "coffee", "cup", "</s>"]
    # every image token and the question are masked
    image_id = processor.image_token_id
    assert bool((item["labels"][item["input_ids"] == image_id] == IGNORE_INDEX).all())
    text = tok.decode(item["input_ids"][item["labels"] == IGNORE_INDEX].tolist())
    assert "what is in the image ?" in text and "coffee" not in text


def test_tiles_match_the_processor_at_inference(processor, data_dir):
    ds = ConversationDataset([data_dir / "train_llava.jsonl"], processor, template="internlm2")
    item = ds[0]
    img = Image.open(data_dir / "images" / "coffee.jpg").convert("RGB")  # the file the record names
    direct = processor(text=["<IMG_CONTEXT> what is in the image ?"], images=[img], return_tensors="pt")
    torch.testing.assert_close(item["pixel_values"], direct["pixel_values"])
    n_ctx = int((item["input_ids"] == processor.image_token_id).sum())
    assert n_ctx == int((direct["input_ids"] == processor.image_token_id).sum())


def test_collator_pads_and_stacks_tiles_in_order(processor, data_dir):
    ds = ConversationDataset([data_dir / "train_llava.jsonl"], processor, template="internlm2")
    items = [ds[0], ds[1]]
    batch = ConversationCollator(processor.tokenizer.pad_token_id)(items)
    longest = max(len(i["input_ids"]) for i in items)
    assert batch["input_ids"].shape == (2, longest)
    short = min(range(2), key=lambda i: len(items[i]["input_ids"]))
    n = len(items[short]["input_ids"])
    assert bool((batch["labels"][short, n:] == IGNORE_INDEX).all()) and bool((batch["attention_mask"][short, n:] == 0).all())
    torch.testing.assert_close(batch["pixel_values"], torch.cat([items[0]["pixel_values"], items[1]["pixel_values"]]))


def test_malformed_line_names_file_and_line(processor, data_dir, tmp_path):
    good = (data_dir / "train_llava.jsonl").read_text().splitlines()
    bad = _write(tmp_path / "bad.jsonl", [good[0], good[1], '{"id": "x", "conversations": [', good[2]])
    with pytest.raises(DataError, match=r"bad\.jsonl:3: not valid JSON"):
        ConversationDataset([bad], processor, image_root=data_dir)


def test_missing_image_names_the_record_or_is_counted(processor, data_dir, tmp_path):
    lines = (data_dir / "train_llava.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    rec["image"] = "images/no_such_photo.jpg"
    path = _write(tmp_path / "missing.jsonl", [lines[0], json.dumps(rec), lines[2]])
    with pytest.raises(DataError, match=r"missing\.jsonl:2 \(id 'astronaut-1'\): image not found: .*no_such_photo\.jpg"):
        ConversationDataset([path], processor, image_root=data_dir)
    ds = ConversationDataset([path], processor, image_root=data_dir, on_missing_image="skip")
    assert len(ds) == 2
    assert len(ds.skipped) == 1 and "missing.jsonl:2" in ds.skipped[0]


@pytest.mark.parametrize(
    "record, message",
    [
        ({"id": 1, "foo": []}, "unknown record format"),
        ({"conversations": [{"from": "human", "value": "hi"}]}, "no assistant answer"),
        ({"image": ["a.jpg", "b.jpg"], "conversations": [{"from": "human", "value": "<image> hi"},
                                                         {"from": "gpt", "value": "a"}]}, "1 `<image>` placeholder"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "image": "https://x/y.jpg"}]},
                       {"role": "assistant", "content": "a"}]}, "is a URL"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "needs `role`"),
    ],
)
def test_bad_records_are_named(processor, tmp_path, record, message):
    path = _write(tmp_path / "r.jsonl", [json.dumps(record)])
    with pytest.raises(DataError, match=r"r\.jsonl:1: .*" + message.replace("`", ".").replace("<", ".").replace(">", ".")):
        ConversationDataset([path], processor)


def test_json_list_file_and_missing_file(processor, data_dir, tmp_path):
    recs = [json.loads(l) for l in (data_dir / "train_messages.jsonl").read_text().splitlines()]
    path = tmp_path / "list.json"
    path.write_text(json.dumps(recs), encoding="utf-8")
    assert len(ConversationDataset([path], processor, image_root=data_dir)) == 4
    with pytest.raises(DataError, match="data file not found"):
        ConversationDataset([tmp_path / "nope.jsonl"], processor)


def test_internlm2_is_internvls_internlm2_chat_exactly():
    """InternVL's fine-tuning renders `internlm2-chat` as system + sep, then role + message + sep per
    turn (conversation.py, separator style MPT: no newline after <|im_end|>), each message stripped
    (dataset.py, preprocess_internlm); the loss covers each answer and its <|im_end|>, not the header."""
    from gswa_plugin.integrations.transformers.data import Turn, render_segments

    turns = [
        Turn("user", "  <image>\nwhat is in the image ?\n"),
        Turn("assistant", " a cat \n"),
        Turn("user", "and the colour ?"),
        Turn("assistant", "red"),
    ]
    segs = render_segments(turns, "internlm2", None, system_prompt="SYS")
    official = (
        "<|im_start|>system\nSYS<|im_end|><|im_start|>user\n<image>\nwhat is in the image ?<|im_end|>"
        "<|im_start|>assistant\na cat<|im_end|><|im_start|>user\nand the colour ?<|im_end|>"
        "<|im_start|>assistant\nred<|im_end|>"
    )
    assert "".join(text for text, _ in segs) == official
    assert [text for text, target in segs if target] == ["a cat<|im_end|>", "red<|im_end|>"]
