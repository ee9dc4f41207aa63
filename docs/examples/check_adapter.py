from gswa_plugin.plugins import register_plugin, unregister_plugin
from gswa_plugin.testing import check_adapter
from gswa_plugin.testing.tiny import sample_image
from gswa_plugin.testing.tiny_hosts import tiny_llava_next, tiny_llava_next_processor

import custom_adapter  # docs/examples/custom_adapter.py; an installed plugin is found through its entry point


def make_inputs():
    """Two images with different tile counts, tiled by the host's real processor."""
    processor = tiny_llava_next_processor()
    processor.tokenizer.padding_side = "left"  # decoder-only generation
    return dict(
        processor(
            text=["<image> describe the image", "what is in the picture <image> ?"],
            images=[sample_image("astronaut"), sample_image("coffee").resize((300, 100))],
            return_tensors="pt",
            padding=True,
        )
    )


register_plugin(custom_adapter, name="my_llava_next")
try:
    report = check_adapter(
        tiny_llava_next,  # a new tiny model on every call, same weights each time
        make_inputs,
        views_per_image=[5, 4],  # what the processor produced: base image + 2x2 tiles, base + 1x3 tiles
        language_model="model.language_model",  # the module that receives inputs_embeds
        adapter="my_llava_next",  # check this adapter, not the built-in one that also matches
        global_position="first",  # LLaVA-NeXT puts the base image before the tiles
    )
finally:
    unregister_plugin(name="my_llava_next")
print(report)
report.assert_passed()  # raises an AssertionError listing every failed check
