"""Conversation data for training: JSON/JSONL files with image paths -> model inputs.

Two record formats are read (one record per JSONL line, or a JSON list of records):

* LLaVA: ``{"id": ..., "image": "a.jpg" | ["a.jpg", ...], "conversations": [{"from": "human",
  "value": "<image>\\nWhat is ...?"}, {"from": "gpt", "value": "..."}]}``;
* OpenAI-style ``messages``: ``{"messages": [{"role": "user", "content": [{"type": "image",
  "image": "a.jpg"}, {"type": "text", "text": "What is ...?"}]}, {"role": "assistant",
  "content": "..."}]}``; string contents with ``<image>`` placeholders plus a top-level
  ``"images"`` list (the lmms-engine layout) work too.

Images are tiled by the host's real processor, exactly as at inference, so GSWA trains on the
tile layouts it will see. Only the assistant's answers carry labels; the prompt (system and
user turns, the assistant prefix, the image tokens) is masked with ``-100``.

Every file is read and every record checked when the dataset is built: a malformed line is a
[`DataError`][gswa_plugin.errors.DataError] naming file and line; a missing image is an error naming
the record, or with ``on_missing_image="skip"`` a counted skip (``dataset.skipped``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from gswa_plugin.errors import DataError

logger = logging.getLogger(__name__)

#: Placeholder for an image inside a turn's text (LLaVA convention).
IMAGE_PLACEHOLDER = "<image>"
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
IGNORE_INDEX = -100


@dataclass
class Turn:
    role: str  # "system", "user" or "assistant"
    text: str  # with IMAGE_PLACEHOLDER where images go


@dataclass
class Record:
    """One conversation: where it came from, its turns, and its image files in order."""

    source: str  # "file:line"
    id: str | None
    turns: list[Turn]
    images: list[Path] = field(default_factory=list)

    def name(self) -> str:
        return f"{self.source}" + (f" (id {self.id!r})" if self.id is not None else "")


# --- reading ----------------------------------------------------------------------------------
def iter_raw_records(path: str | os.PathLike[str]) -> Iterator[tuple[str, Any]]:
    """``("file:line", object)`` for every record of a JSON or JSONL file.

    Raises:
        DataError: the file is missing, or a line (JSONL) / the file (JSON) is not valid JSON.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}; check `data.train_files` / `data.eval_files`")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (written by some editors) is not an error
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{p}:{line}: not valid UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start}); data files must be "
            "UTF-8: re-encode the file (e.g. `iconv -f latin1 -t utf-8`) or fix the line"
        ) from exc
    if p.suffix.lower() == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{p}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}); fix the file "
                "(a .json file holds one list of records; use .jsonl for one record per line)"
            ) from exc
        if not isinstance(data, list):
            raise DataError(f"{p}: a .json data file must hold a list of records, got {type(data).__name__}")
        for i, obj in enumerate(data):
            yield f"{p}:record {i}", obj
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{p}:{lineno}: not valid JSON ({exc.msg}, column {exc.colno}); fix or remove the line"
            ) from exc
        yield f"{p}:{lineno}", obj


def _image_ref(part: dict[str, Any], where: str) -> str:
    for key in ("image", "path", "url", "image_url"):
        value = part.get(key)
        if isinstance(value, dict):
            value = value.get("url") or value.get("path")
        if isinstance(value, str) and value:
            if value.startswith(("http://", "https://", "data:")):
                raise DataError(
                    f"{where}: image {value[:60]!r} is a URL; download it and give a file path (training reads local files)"
                )
            return value.removeprefix("file://")
    raise DataError(f"{where}: an image part needs a file path under `image` (or `path`/`url`), got {part!r}")


def parse_record(obj: Any, where: str, root: Path) -> Record:
    """Turn one raw record (LLaVA or OpenAI ``messages``) into a
    [`Record`][gswa_plugin.integrations.transformers.data.Record].

    Raises:
        DataError: naming ``where`` and what is wrong.
    """
    if not isinstance(obj, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(obj).__name__}")
    rid = obj.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
        raise DataError(f"{where}: `id` must be a string or a number, got {type(rid).__name__}")
    rid = None if rid is None else str(rid)
    turns: list[Turn] = []
    images: list[str] = []
    if "conversations" in obj:
        conv = obj["conversations"]
        if not isinstance(conv, list):
            raise DataError(f"{where}: `conversations` must be a list of turns")
        for i, t in enumerate(conv):
            if not isinstance(t, dict) or "value" not in t or t.get("from") not in _ROLES:
                raise DataError(
                    f"{where}: turn {i} of `conversations` needs `from` (one of {', '.join(_ROLES)}) and `value`"
                )
            if not isinstance(t["value"], str):
                raise DataError(
                    f"{where}: turn {i} of `conversations` has a `value` of type {type(t['value']).__name__}; "
                    "it must be the turn's text (a string, with `<image>` where images go)"
                )
            turns.append(Turn(_ROLES[t["from"]], t["value"]))
        images = _image_list(obj.get("image", obj.get("images")), "image", where)
    elif "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list):
            raise DataError(f"{where}: `messages` must be a list")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in _ROLES:
                raise DataError(f"{where}: message {i} needs `role` (one of system, user, assistant)")
            content = m.get("content")
            if content is None and "content" not in m:
                raise DataError(f"{where}: message {i} needs `content` (a string or a list of parts)")
            if isinstance(content, str):
                turns.append(Turn(_ROLES[m["role"]], content))
                continue
            if not isinstance(content, list):
                raise DataError(f"{where}: message {i} `content` must be a string or a list of parts")
            pieces: list[str] = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    if not isinstance(part.get("text"), str):
                        raise DataError(
                            f"{where}: message {i} has a text part whose `text` is "
                            f"{type(part.get('text')).__name__}, not a string"
                        )
                    pieces.append(part["text"])
                elif kind in ("image", "image_url"):
                    images.append(_image_ref(part, f"{where}: message {i}"))
                    pieces.append(IMAGE_PLACEHOLDER + "\n")
                else:
                    raise DataError(f"{where}: message {i} has a part of unknown type {kind!r} (use `text` or `image`)")
            turns.append(Turn(_ROLES[m["role"]], "".join(pieces)))
        images.extend(_image_list(obj.get("images"), "images", where))
    else:
        raise DataError(
            f"{where}: unknown record format; expected `conversations` (LLaVA) or `messages` (OpenAI style)"
        )
    if not any(t.role == "assistant" and t.text.strip() for t in turns):
        raise DataError(f"{where}: the conversation has no assistant answer to train on")
    n_placeholders = sum(t.text.count(IMAGE_PLACEHOLDER) for t in turns)
    if n_placeholders == 0 and images:
        first_user = next((t for t in turns if t.role == "user"), None)
        if first_user is None:
            raise DataError(f"{where}: the record has images but no user turn to put them in")
        first_user.text = IMAGE_PLACEHOLDER * len(images) + "\n" + first_user.text
    elif n_placeholders != len(images):
        raise DataError(
            f"{where}: {n_placeholders} `{IMAGE_PLACEHOLDER}` placeholder(s) but {len(images)} image(s); "
            "give one placeholder per image"
        )
    paths = [Path(i) if Path(i).is_absolute() else root / i for i in images]
    return Record(where, rid, turns, paths)


def _image_list(value: Any, key: str, where: str) -> list[str]:
    """A record's top-level image field (``image``/``images``): a path or a list of paths."""
    if value is None or value == []:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
        raise DataError(f"{where}: `{key}` must be an image path or a list of image paths (strings), got {value!r:.80}")
    return list(items)


# --- images -------------------------------------------------------------------------------------
#: How each format's file ends when it is complete (a file that ends otherwise is decoded in full).
_ENDINGS = {"JPEG": (b"\xff\xd9",), "PNG": (b"IEND\xaeB`\x82",)}


def image_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image (``None`` when it can).

    Cheap for good files: the header is read (not an image, an empty file, an unknown format),
    and a JPEG or PNG must end with its end marker; only a file that does not is decoded in
    full, to tell a truncated image from one with harmless trailing bytes.
    """
    try:
        with Image.open(path) as im:
            fmt = im.format
            width, height = im.size
            if width < 1 or height < 1:
                return f"it has no pixels ({width}x{height})"
            endings = _ENDINGS.get(fmt or "")
            if endings is not None:
                with open(path, "rb") as f:
                    f.seek(max(0, os.path.getsize(path) - 64))
                    tail = f.read().rstrip(b"\x00\r\n\t ")
                if not tail.endswith(endings):
                    im.load()  # raises on a truncated file
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if path.stat().st_size == 0:
            return "it is an empty file"
        return f"it cannot be read as an image ({type(exc).__name__}: {exc})"
    return None


# --- chat formats -----------------------------------------------------------------------------
def render_segments(
    turns: Sequence[Turn], template: str, tokenizer: Any, system_prompt: str | None = None
) -> list[tuple[str, bool]]:
    """The conversation as text segments ``(text, is_target)``; targets are the assistant answers.

    ``internlm2`` is InternVL2's ``internlm2-chat`` format exactly as InternVL's fine-tuning
    renders it (``conversation.py``, separator style MPT; ``dataset.py``, ``preprocess_internlm``):
    ``<|im_start|>system\n{system}<|im_end|><|im_start|>user\n{question}<|im_end|>``
    ``<|im_start|>assistant\n{answer}<|im_end|>`` with no newline after ``<|im_end|>``, every
    message stripped of surrounding whitespace, and the targets each answer with its ``<|im_end|>``
    (the assistant header is not a target). ``plain`` is a minimal format for word-level
    tokenizers; ``tokenizer`` the tokenizer's own chat template, cut into segments by rendering
    growing prefixes of the conversation (so the template must render a prefix as a prefix).
    """
    turns = list(turns)
    if system_prompt and not any(t.role == "system" for t in turns):
        turns.insert(0, Turn("system", system_prompt))
    eos = getattr(tokenizer, "eos_token", None) or ""
    if template == "tokenizer":
        return _segments_from_chat_template(turns, tokenizer)
    segs: list[tuple[str, bool]] = []
    for t in turns:
        if template == "internlm2":
            text = t.text.strip()  # as InternVL's preprocess_internlm
            if t.role == "assistant":
                segs += [("<|im_start|>assistant\n", False), (text + "<|im_end|>", True)]
            else:
                segs.append((f"<|im_start|>{t.role}\n{text}<|im_end|>", False))
        elif template == "plain":
            if t.role == "assistant":
                segs += [("assistant : ", False), (f"{t.text} {eos}".rstrip(), True), ("\n", False)]
            else:
                segs.append((f"{t.role} : {t.text}\n", False))
        else:
            raise DataError(f"unknown chat template {template!r}; use internlm2, plain or tokenizer")
    return segs


def _segments_from_chat_template(turns: list[Turn], tokenizer: Any) -> list[tuple[str, bool]]:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("`data.template: tokenizer` but the tokenizer has no chat template; use `internlm2` or `plain`")
    msgs = [{"role": t.role, "content": t.text} for t in turns]
    segs: list[tuple[str, bool]] = []
    done = ""
    for i, t in enumerate(turns):
        if t.role != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False, add_generation_prompt=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise DataError(
                "the tokenizer's chat template does not render a conversation prefix as a prefix, so answers "
                "cannot be cut out for the labels; use `data.template: internlm2` or `plain`"
            )
        segs += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
        done = full
    return segs


# --- dataset ----------------------------------------------------------------------------------
class ConversationDataset(torch.utils.data.Dataset):
    """Conversations from JSON/JSONL files, encoded with the host's processor on access.

    Args:
        files: data files (JSON list or JSONL).
        processor: the host's processor (tokenizer + image processor).
        template: chat format (see [`render_segments`][gswa_plugin.integrations.transformers.data.render_segments]).
        system_prompt: system message put first where a record has none.
        max_length: longest sequence; longer ones are cut at the end (never inside images).
        image_root: where relative image paths resolve; ``None``: each data file's directory.
        on_missing_image: ``"error"`` or ``"skip"`` (count the record and leave it out).

    Raises:
        DataError: a malformed file, line or record, or (with ``"error"``) a missing image.
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike[str]],
        processor: Any,
        template: str = "internlm2",
        system_prompt: str | None = None,
        max_length: int = 4096,
        image_root: str | os.PathLike[str] | None = None,
        on_missing_image: str = "error",
    ):
        if on_missing_image not in ("error", "skip"):
            raise DataError(f"on_missing_image must be 'error' or 'skip', got {on_missing_image!r}")
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.template = template
        self.system_prompt = system_prompt
        self.max_length = max_length
        self.records: list[Record] = []
        self.skipped: list[str] = []
        if not files:
            raise DataError("no data files given; set `data.train_files`")
        for f in files:
            root = Path(image_root) if image_root is not None else Path(f).parent
            for where, obj in tqdm(iter_raw_records(f), desc=f"reading {Path(f).name}", unit=" records", disable=None):
                rec = parse_record(obj, where, root)
                problem = self._image_problem(rec)
                if problem:
                    if on_missing_image == "skip":
                        self.skipped.append(f"{rec.name()}: {problem}")
                        continue
                    raise DataError(
                        f"{rec.name()}: {problem}; or set `data.on_missing_image: skip` to leave records with "
                        "missing or unreadable images out (they are counted)"
                    )
                self.records.append(rec)
        if self.skipped:
            logger.warning(
                "skipped %d record(s) with missing or unreadable images, e.g. %s", len(self.skipped), self.skipped[0]
            )
        if not self.records:
            raise DataError(f"no usable records in {', '.join(map(str, files))}")
        probe = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        bare = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        # the special tokens the tokenizer puts before a text (e.g. BOS), added once per sequence
        self._prefix = probe[: len(probe) - len(bare)] if probe[len(probe) - len(bare) :] == bare else []
        self._image_token = getattr(processor, "image_token", IMAGE_PLACEHOLDER)
        self._image_ids = {
            i
            for i in (
                getattr(processor, name, None)
                for name in ("image_token_id", "start_image_token_id", "end_image_token_id")
            )
            if i is not None
        }

        self._check_answers_fit()

    @staticmethod
    def _image_problem(rec: Record) -> str | None:
        for p in rec.images:
            if not p.is_file():
                return f"image not found: {p}; fix the path or set `data.image_root`"
            why = image_problem(p)
            if why:
                return f"image {p} is unusable: {why}; replace or remove the file"
        return None

    #: Records encoded when the dataset is built to check that ``max_length`` leaves answers to train on.
    PROBE_RECORDS = 8

    def _check_answers_fit(self) -> None:
        """Encode the first records; if ``max_length`` cuts off every answer of all of them, training
        would learn nothing (loss 0), so say it now.

        Raises:
            DataError: naming ``data.max_length`` and the length the first record needs.
        """
        probe = self.records[: self.PROBE_RECORDS]
        needed = []
        for rec in probe:
            item = self.encode(rec, _probe=True)
            if bool((item["labels"] != IGNORE_INDEX).any()):
                return
            needed.append((rec, item["_full_length"]))
        rec, length = needed[0]
        raise DataError(
            f"`data.max_length` ({self.max_length}) cuts off every answer of the first {len(probe)} record(s), so "
            f"there is nothing to train on (the loss would be 0); {rec.name()} needs {length} tokens. Raise "
            "`data.max_length`, or lower `model.max_patches` (fewer image tokens)"
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.encode(self.records[index])

    def encode(self, rec: Record, _probe: bool = False) -> dict[str, torch.Tensor]:
        """Input ids, labels (prompt masked), attention mask and pixel values of one record.

        Raises:
            DataError: an image cannot be read (naming the record and the file), or the image
                tokens alone exceed ``max_length``.
        """
        images = []
        for p in rec.images:
            try:
                with Image.open(p) as im:
                    images.append(im.convert("RGB"))
            except (OSError, SyntaxError, ValueError) as exc:
                raise DataError(
                    f"{rec.name()}: image {p} cannot be read ({type(exc).__name__}: {exc}); replace or remove the "
                    "file (it changed after the dataset was built, or is damaged past its header)"
                ) from exc
        ids: list[int] = list(self._prefix)
        labels: list[int] = [IGNORE_INDEX] * len(ids)
        pixels: list[torch.Tensor] = []
        used = 0
        segments = render_segments(rec.turns, self.template, self.tokenizer, self.system_prompt)
        for group in self._groups(segments):
            # one tokenizer call per group, so the ids are those of the whole text; labels by the
            # lengths of the group's growing prefixes, as InternVL's preprocess_internlm masks
            text = "".join(t for t, _ in group)
            seg, pix = self._tokenize(text, images, used)
            start = 0
            for k, (_, is_target) in enumerate(group):
                end = len(seg) if k == len(group) - 1 else len(self._tokenize("".join(t for t, _ in group[: k + 1]), images, used)[0])
                ids += seg[start:end]
                labels += seg[start:end] if is_target else [IGNORE_INDEX] * (end - start)
                start = end
            if pix is not None:
                pixels.append(pix)
            used += text.count(IMAGE_PLACEHOLDER)
        full_length = len(ids)
        if len(ids) > self.max_length:
            last_image = max((i for i, t in enumerate(ids) if t in self._image_ids), default=-1)
            if last_image >= self.max_length:
                raise DataError(
                    f"{rec.name()}: its image tokens alone need {last_image + 1} tokens, more than "
                    f"`data.max_length` ({self.max_length}); raise max_length or lower `model.max_patches`"
                )
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        item = {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.ones(len(ids), dtype=torch.long),
        }
        if pixels:
            item["pixel_values"] = torch.cat(pixels, dim=0)
        if _probe:
            item["_full_length"] = full_length  # type: ignore[assignment]
        return item


    def _tokenize(self, text: str, images: list[Image.Image], used: int) -> tuple[list[int], torch.Tensor | None]:
        """Ids of ``text`` (its images, from ``images[used:]``, expanded by the processor) and their pixels."""
        n = text.count(IMAGE_PLACEHOLDER)
        if not n:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"], None
        out = self.processor(
            text=[text.replace(IMAGE_PLACEHOLDER, self._image_token)],
            images=images[used : used + n],
            return_tensors="pt",
            add_special_tokens=False,
        )
        return out["input_ids"][0].tolist(), out["pixel_values"]

    def _groups(self, segments: list[tuple[str, bool]]) -> list[list[tuple[str, bool]]]:
        """Segments joined where the text runs on between them, cut only next to a special token
        (``<|im_end|>``, ``<|im_start|>``, ...). A tokenizer splits at special tokens anyway, so the
        groups tokenised one by one give the ids of the whole conversation; a cut elsewhere (after
        ``<|im_start|>assistant\n``) could give other ids (SentencePiece's dummy prefix before the answer)."""
        specials = [t for t in getattr(self.tokenizer, "all_special_tokens", []) if t] + [
            t for t in ("<|im_start|>", "<|im_end|>") if t in self.tokenizer.get_vocab()
        ]
        groups: list[list[tuple[str, bool]]] = []
        for seg in segments:
            if groups:
                prev = groups[-1][-1][0]
                if not (any(prev.endswith(t) for t in specials) or any(seg[0].startswith(t) for t in specials)):
                    groups[-1].append(seg)
                    continue
            groups.append([seg])
        return groups


class ConversationCollator:
    """Pads a list of encoded records into a batch (right padding; labels padded with ``-100``)
    and stacks every record's tiles into one ``pixel_values``, in record order."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = int(pad_token_id)

    def __call__(self, items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        longest = max(it["input_ids"].shape[0] for it in items)

        def pad(key: str, value: int) -> torch.Tensor:
            out = torch.full((len(items), longest), value, dtype=torch.long)
            for i, it in enumerate(items):
                out[i, : it[key].shape[0]] = it[key]
            return out

        batch = {
            "input_ids": pad("input_ids", self.pad_token_id),
            "labels": pad("labels", IGNORE_INDEX),
            "attention_mask": pad("attention_mask", 0),
        }
        pix = [it["pixel_values"] for it in items if "pixel_values" in it]
        if pix:
            batch["pixel_values"] = torch.cat(pix, dim=0)
        return batch
