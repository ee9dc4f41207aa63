import torch, gswa_plugin
from gswa_plugin.testing.tiny import tiny_internvl, tiny_internvl_processor, sample_image

model = tiny_internvl()                          # or AutoModelForImageTextToText.from_pretrained(...)
processor = tiny_internvl_processor()            # or AutoProcessor.from_pretrained(...)
inputs = processor(text=["<IMG_CONTEXT> describe the image"], images=[sample_image("coffee")], return_tensors="pt")
gswa_plugin.enable(model, "gswa.yaml")           # a YAML path, a dict or a GSWAConfig
out = model.generate(**inputs, max_new_tokens=8)
print(gswa_plugin.last_weights(model))           # per image: one weight per tile, mean 1
gswa_plugin.save(model, "gswa_out")              # only GSWA's weights + its config
gswa_plugin.disable(model)                       # back to the original model, bit for bit
