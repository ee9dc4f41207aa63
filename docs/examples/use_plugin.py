import gswa_plugin
from gswa_plugin.plugins import register_plugin
from gswa_plugin.testing.tiny import sample_image, tiny_internvl, tiny_internvl_processor

import plugin  # docs/examples/plugin.py; an installed plugin is found through its entry point instead

register_plugin(plugin, name="example")
model, processor = tiny_internvl(), tiny_internvl_processor()
inputs = processor(text=["<IMG_CONTEXT> describe the image"], images=[sample_image("coffee")], return_tensors="pt")
gswa_plugin.enable(model, {"variant": "summary_norm"})
model(**inputs)
print(plugin.LOGGED[-1])  # one list of tile weights per image, mean 1
