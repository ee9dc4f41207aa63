"""Put GSWA trained by a host framework (lmms-engine, llava) back on a model.

Both integrations write ``gswa/`` (``gswa.safetensors`` + ``gswa_config.yaml``) into every
checkpoint folder they save; ``gswa_plugin.load`` enables GSWA with that config and loads the
weights. (Used by tests/test_lmms_engine.py on a real lmms-engine checkpoint.)
"""

from __future__ import annotations

from pathlib import Path

import gswa_plugin
from transformers import AutoModelForImageTextToText


def load_trained(base_model: str, checkpoint: str):
    """The base model with the GSWA of ``<checkpoint>/gswa`` enabled and loaded."""
    model = AutoModelForImageTextToText.from_pretrained(base_model)
    gswa_plugin.load(model, Path(checkpoint) / "gswa")
    return model
