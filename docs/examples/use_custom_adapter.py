import gswa_plugin
from gswa_plugin.plugins import register_plugin
from gswa_plugin.testing.tiny import sample_image
from gswa_plugin.testing.tiny_hosts import tiny_llava_next, tiny_llava_next_processor

import custom_adapter  # docs/examples/custom_adapter.py; an installed plugin is found through its entry point

register_plugin(custom_adapter, name="my_llava_next")
model, processor = tiny_llava_next(), tiny_llava_next_processor()
inputs = processor(text=["<image> describe the image"], images=[sample_image("coffee")], return_tensors="pt")
gswa_plugin.enable(model, {"adapter": "my_llava_next", "variant": "cosine"})  # name it: the built-in also matches
model(**inputs)
print(gswa_plugin.last_weights(model))  # one list of tile weights per image, mean 1
