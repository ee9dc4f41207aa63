"""Weight picture of one photograph with the Python API (docs/visualize.md)."""

import gswa_plugin
from gswa_plugin.testing.tiny import sample_image, tiny_internvl, tiny_internvl_processor
from gswa_plugin.tools.visualize import image_weights, visualize

# any supported host works; a real one comes from
# AutoModelForImageTextToText.from_pretrained(...) and AutoProcessor.from_pretrained(...)
model = tiny_internvl(image_size=224)
processor = tiny_internvl_processor(image_size=224, max_patches=6)
gswa_plugin.enable(model, {"variant": "cosine"})  # or gswa_plugin.load(model, "runs/gswa")

photo = sample_image("coffee")
picture = visualize(model, processor, photo)  # a PIL image
picture.save("coffee_weights.png")

weights = image_weights(model, processor, photo)  # the numbers behind the picture
print(weights.grid, [round(w, 2) for w in weights.tile_weights], weights.thumbnail_weight)
