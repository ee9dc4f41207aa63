"""Loading real checkpoints and processors with transformers, robust to a missing torchvision.

transformers 5.x cannot resolve the video-processor base class without torchvision, so it
refuses to build (or save) any processor that declares one, e.g. ``InternVLProcessor``, even for
images only. :func:`load_processor` falls back to the processor class built from its image
processor and tokenizer with only that class check relaxed; processing is the real class's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


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


def load_processor(path: str | os.PathLike[str]) -> Any:
    """``AutoProcessor.from_pretrained(path)``, or, where that fails for want of torchvision, the
    processor class named in the checkpoint built from its image processor and tokenizer."""
    import transformers
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(path)
    except (AttributeError, ImportError, ValueError, TypeError) as first_error:
        cfg_file = Path(path) / "processor_config.json"
        if not cfg_file.is_file():
            raise first_error
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        cls = getattr(transformers, cfg.get("processor_class", ""), None)
        if cls is None:
            raise first_error
        kwargs = {k: v for k, v in cfg.items() if k not in ("processor_class",)}
        image_processor = AutoImageProcessor.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return processor_class(cls)(image_processor=image_processor, tokenizer=tokenizer, **kwargs)
