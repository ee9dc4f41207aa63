"""InternVL2 as released (remote-code InternVLChatModel), through its faithful stand-in; tiles
from the same closest-aspect-ratio algorithm (GotOcr2 PIL image processor), training-path inputs."""

from __future__ import annotations

from gswa_plugin.testing.tiny import sample_image
from gswa_plugin.testing.tiny_more import internvl_chat_inputs, tiny_internvl_chat

from . import HostCase


def _inputs() -> dict:
    return internvl_chat_inputs(
        [sample_image("astronaut"), sample_image("coffee").resize((300, 100))],
        ["<image> describe the image", "what is in the picture <image> ?"],
        tiny_internvl_chat(),
    )


CASE = HostCase(
    adapter="internvl_chat",
    make_model=tiny_internvl_chat,
    make_inputs=_inputs,
    views_per_image=[5, 4],
    language_model=lambda m: m.language_model,
    # The released class's generate() takes no image_flags (forward's training inputs); its
    # generation path is chat()/batch_chat(), exercised in tests/test_adapters_more.py.
    supports_generate=False,
)
