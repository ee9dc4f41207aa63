"""Loading real checkpoints and processors with transformers, robust to a missing torchvision.

transformers 5.x cannot resolve the video-processor base class without torchvision, so it
refuses to build (or save) any processor that declares one, e.g. ``InternVLProcessor``, even for
images only. [`load_processor`][gswa_plugin.hf.load_processor] falls back to the processor class built from its image
processor and tokenizer with only that class check relaxed; processing is the real class's.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any


class _TorchvisionFallbackFilter(logging.Filter):
    """Drops transformers' "`XImageProcessor` requires torchvision (not installed); falling back to
    `XImageProcessorPil` ... Install torchvision" warning. The PIL image processor is what this
    package uses on purpose (the registry's torchvision drags in another torch build), so the
    advice is wrong here and nothing is lost."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("requires torchvision (not installed)" in message and "falling back to" in message)


def quiet_torchvision_fallback() -> None:
    """Install the filter on transformers' import-utils logger (idempotent); done when this module loads,
    which the tiny hosts, the demo, the inspection tools and ``gswa train`` all import first."""
    logger = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, _TorchvisionFallbackFilter) for f in logger.filters):
        logger.addFilter(_TorchvisionFallbackFilter())


quiet_torchvision_fallback()


def processor_class(cls: type) -> type:
    """A subclass of ``cls`` that accepts ``video_processor=None`` (image-only processors built in
    code; with or without torchvision, where the real class insists on a video processor)."""

    class NoVideo(cls):  # type: ignore[misc, valid-type]
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument is None and "video" in argument_name:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    NoVideo.__name__ = cls.__name__
    NoVideo.__qualname__ = cls.__qualname__
    return NoVideo


def image_processor_class(cls: type) -> type:
    """The PIL image processor where torchvision is missing (transformers falls back to it anyway)."""
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return cls
    import transformers

    return getattr(transformers, cls.__name__ + "Pil", cls)


def save_processor(processor: Any, directory: str | os.PathLike[str]) -> None:
    """Save a processor; without torchvision, its image processor, tokenizer and class name."""
    try:
        processor.save_pretrained(directory)
        return
    except AttributeError:
        pass  # a None video processor: save the parts
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    processor.image_processor.save_pretrained(d)
    processor.tokenizer.save_pretrained(d)
    extra = {k: getattr(processor, k) for k in ("image_seq_length",) if hasattr(processor, k)}
    (d / "processor_config.json").write_text(
        json.dumps({"processor_class": type(processor).__name__, **extra}, indent=2), encoding="utf-8"
    )


def load_processor(
    path: str | os.PathLike[str], max_patches: int | None = None, min_patches: int | None = None
) -> Any:
    """The processor of a checkpoint directory (or cached hub id).

    ``AutoProcessor.from_pretrained(path)`` first; where that fails for want of torchvision, the
    processor class named in the saved configs (``processor_config.json`` as written by
    [`save_processor`][gswa_plugin.hf.save_processor], then ``config.json``) is built from the saved image processor and
    tokenizer. ``max_patches``/``min_patches`` override the image processor's tile limits.
    """
    import transformers
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        processor = AutoProcessor.from_pretrained(path)
    except (AttributeError, ImportError, ValueError, TypeError, OSError) as first_error:
        saved: dict[str, Any] = {}
        for name in ("config.json", "processor_config.json"):  # the processor's own file wins
            f = Path(path) / name
            if f.is_file():
                saved.update(json.loads(f.read_text(encoding="utf-8")))
        cls = getattr(transformers, str(saved.get("processor_class", "")), None)
        if cls is None:
            raise first_error
        kwargs = {"image_seq_length": saved["image_seq_length"]} if "image_seq_length" in saved else {}
        processor = processor_class(cls)(
            image_processor=AutoImageProcessor.from_pretrained(path),
            tokenizer=AutoTokenizer.from_pretrained(path),
            **kwargs,
        )
    if max_patches is not None:
        processor.image_processor.max_patches = max_patches
    if min_patches is not None:
        processor.image_processor.min_patches = min_patches
    return processor
