"""Shared fixtures: tiny real host models built offline, real photographs, and a clean plugin manager."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Keep third-party plugins installed on the machine out of the tests; tests that need one set it.
os.environ.setdefault("GSWA_PLUGINS", "")

import pytest
import torch

from gswa_plugin import plugins
from gswa_plugin.testing.tiny import sample_image, tiny_internvl, tiny_internvl_processor

#: Tile size of the fast tiny InternVL (56 px tiles, patch 14 -> 16 patches -> 4 tokens per tile).
TILE = 56


@pytest.fixture(autouse=True)
def _fresh_plugin_manager():
    """Every test starts with a plugin manager holding only the built-in plugins."""
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()


@pytest.fixture(scope="session")
def internvl_processor():
    return tiny_internvl_processor(image_size=TILE, max_patches=6)


@pytest.fixture
def internvl_model():
    return tiny_internvl(image_size=TILE)


@pytest.fixture(scope="session")
def photos():
    """Two real photographs of different aspect ratios (different tile counts)."""
    return [sample_image("astronaut"), sample_image("coffee")]


@pytest.fixture(scope="session")
def internvl_inputs(internvl_processor, photos):
    """A batch of two prompts, one real photograph each, tiled by the real processor."""
    return internvl_processor(
        text=["<IMG_CONTEXT> describe the image", "what is in the picture <IMG_CONTEXT> ?"],
        images=[photos[0], photos[1].resize((300, 100))],
        return_tensors="pt",
        padding=True,
    )


def lm_inputs_embeds(model, **inputs) -> torch.Tensor:
    """The ``inputs_embeds`` the language model actually receives in a forward (captured by a pre-hook)."""
    seen = {}

    def hook(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach().clone()

    lm = model.model.language_model
    h = lm.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        h.remove()
    return seen["embeds"]
