"""An lmms-engine data processor for transformers' native InternVL (``processor_type: internvl``).

lmms-engine ships processors for Qwen-VL, LLaVA-OneVision and others, none for InternVL. This one
reads the same OpenAI-style messages as lmms-engine's other vision processors and produces what
``InternVLForConditionalGeneration`` takes: ``input_ids`` with each image expanded by the real
``InternVLProcessor`` into ``<img>`` + 256 ``<IMG_CONTEXT>`` per tile + ``</img>``, ``labels``
(-100 outside assistant turns), and ``pixel_values`` of every tile of every image (row-major
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
        ids: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        pixels: list[torch.Tensor] = []
        used = 0
        for message in hf_messages:
            n_images = sum(1 for c in message.get("content", []) if isinstance(c, dict) and c.get("type") == "image")
            text = self.processor.apply_chat_template([message], tokenize=False)
            if isinstance(text, list):
                text = text[0]
            if n_images:
                if used + n_images > len(images):
                    raise ValueError(
                        f"the messages reference {used + n_images} images but the sample has {len(images)}"
                    )
                out = self.processor(text=[text], images=images[used : used + n_images], return_tensors="pt")
                pixels.append(out["pixel_values"])
                used += n_images
            else:
                out = self.processor.tokenizer([text], return_tensors="pt", add_special_tokens=False)
            seq = out["input_ids"][0]
            ids.append(seq)
            trained = message.get("role") == "assistant"
            labels.append(seq.clone() if trained else torch.full_like(seq, IGNORE_INDEX))
        result: dict[str, torch.Tensor] = {"input_ids": torch.cat(ids), "labels": torch.cat(labels)}
        if pixels:
            result["pixel_values"] = torch.cat(pixels)
        return result
