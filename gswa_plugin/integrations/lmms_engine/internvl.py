"""An lmms-engine data processor for transformers' native InternVL (``processor_type: internvl``).

lmms-engine ships processors for Qwen-VL, LLaVA-OneVision and others, none for InternVL. This one
reads the same OpenAI-style messages as lmms-engine's other vision processors and produces what
``InternVLForConditionalGeneration`` takes: ``input_ids`` with each image expanded by the real
``InternVLProcessor`` into ``<img>`` + 256 ``<IMG_CONTEXT>`` per tile + ``</img>``, ``labels``
(-100 outside the answers: each answer and its end marker are targets, the assistant header is not;
the tokenizer's ``<s>`` comes once, at the start), and ``pixel_values`` of every tile of every image (row-major
tiles, thumbnail last). lmms-engine's ``VisionCollator`` concatenates ``pixel_values`` over the
batch, which is the layout the model expects; GSWA recovers tiles per image from ``input_ids``.
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100


class InternVLDataProcessor:
    """lmms-engine data processor for ``InternVLProcessor`` checkpoints (``processor_name``: a
    local folder or hub id holding the processor and its chat template).

    Args:
        config: lmms-engine's ``ProcessorConfig`` (``processor_name``, ``processor_type``).
    """

    def __init__(self, config: Any) -> None:
        self.config = config
        self.processor: Any = None

    def build(self) -> None:
        from gswa_plugin.hf import load_processor

        self.processor = load_processor(self.config.processor_name)
        if getattr(self.processor, "chat_template", None) is None:
            # checkpoints often carry the template on the tokenizer only
            self.processor.chat_template = getattr(self.processor.tokenizer, "chat_template", None)
        if getattr(self.processor, "chat_template", None) is None:
            raise ValueError(
                f"the processor in {self.config.processor_name} has no chat template; InternVL training data "
                "is rendered with it (save the checkpoint's processor with its chat_template)"
            )

    def save_pretrained(self, output_dir: str) -> None:
        self.processor.save_pretrained(output_dir)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def image_token(self) -> str:
        return self.processor.image_token

    @property
    def image_token_id(self) -> int:
        return self.processor.image_token_id

    def process(self, images: list[Any] | None, hf_messages: list[dict[str, Any]], videos: Any = None, **kwargs: Any):
        """One sample: chat messages (lmms-engine's HF form) and their images, in order.

        Returns:
            ``input_ids`` and ``labels`` ``[seq]``, and ``pixel_values`` ``[tiles, 3, H, W]`` when
            the sample has images.
        """
        if videos:
            raise ValueError("the internvl processor of gswa-plugin handles images only, not videos")
        images = list(images or [])
        tokenizer = self.processor.tokenizer
        image_token = self.processor.image_token
        # the special tokens the tokenizer puts before a text (InternLM2: <s>), once per sample
        probe, bare = tokenizer("a")["input_ids"], tokenizer("a", add_special_tokens=False)["input_ids"]
        prefix = probe[: len(probe) - len(bare)] if probe[len(probe) - len(bare) :] == bare else []
        ids: list[torch.Tensor] = [torch.tensor(prefix, dtype=torch.long)]
        labels: list[torch.Tensor] = [torch.full((len(prefix),), IGNORE_INDEX, dtype=torch.long)]
        pixels: list[torch.Tensor] = []
        used = 0
        for text, trained in self._segments(hf_messages):
            n_images = text.count(image_token)
            if n_images:
                if used + n_images > len(images):
                    raise ValueError(
                        f"the messages reference {used + n_images} images but the sample has {len(images)}"
                    )
                out = self.processor(
                    text=[text], images=images[used : used + n_images], return_tensors="pt", add_special_tokens=False
                )
                pixels.append(out["pixel_values"])
                used += n_images
            else:
                out = tokenizer([text], return_tensors="pt", add_special_tokens=False)
            seq = out["input_ids"][0]
            ids.append(seq)
            labels.append(seq.clone() if trained else torch.full_like(seq, IGNORE_INDEX))
        result: dict[str, torch.Tensor] = {"input_ids": torch.cat(ids), "labels": torch.cat(labels)}
        if pixels:
            result["pixel_values"] = torch.cat(pixels)
        return result

    def _render(self, messages: list[dict[str, Any]], generation_prompt: bool = False) -> str:
        if not messages and not generation_prompt:
            return ""
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        return text[0] if isinstance(text, list) else text

    def _segments(self, messages: list[dict[str, Any]]) -> list[tuple[str, bool]]:
        """The sample as ``(text, is_target)`` pieces, cut from the chat template's renderings of
        growing prefixes of the conversation: so the template's system message appears once, and a
        target is an answer with its end marker (the assistant header, rendered by the generation
        prompt, is not). With the converted InternVL2 template this is InternVL's ``internlm2-chat``
        training format and label mask (``preprocess_internlm``)."""
        pieces: list[tuple[str, bool]] = []
        done = ""
        for i, message in enumerate(messages):
            full = self._render(messages[: i + 1])
            prompt = self._render(messages[:i], generation_prompt=True) if message.get("role") == "assistant" else done
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise ValueError(
                    "the processor's chat template does not render a conversation prefix as a prefix, so answers "
                    "cannot be cut out for the labels; save the checkpoint with `gswa convert-internvl2`'s template"
                )
            if prompt != done:
                pieces.append((prompt[len(done) :], False))
            pieces.append((full[len(prompt) :], message.get("role") == "assistant"))
            done = full
        return pieces
