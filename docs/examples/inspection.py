"""Tile removal and diagnostics with the Python API (docs/inspection.md)."""

import gswa_plugin
from gswa_plugin.tools import inspect as it
from gswa_plugin.testing.tiny import sample_image, tiny_internvl, tiny_internvl_processor

model = tiny_internvl(image_size=224)
processor = tiny_internvl_processor(image_size=224, max_patches=6)
gswa_plugin.enable(model, {"variant": "cosine"})
images = [("coffee", sample_image("coffee")), ("chelsea", sample_image("chelsea"))]

# (a) take away the 2 tiles GSWA weighs most (zero their features) and measure the change
spec = it.RemovalSpec(k=2, by="weight", which="highest", mode="zero")
for r in it.remove_tiles_on_images(model, processor, images, spec):
    print(r.name, "removed tiles", r.removed, f"KL {r.change.kl_divergence:.4f}", "top-1 same:", r.change.top1_same)

# the same on one forward you run yourself; mode="drop" also removes the tiles' image tokens
inputs = processor(text=["<IMG_CONTEXT> describe the image"], images=[images[0][1]], return_tensors="pt")
output, removed, used_inputs = it.run_with_removal(model, inputs, it.RemovalSpec(k=2, mode="drop"))
print("dropped", removed, "sequence", inputs["input_ids"].shape[1], "->", used_inputs["input_ids"].shape[1])

# (c) the failure signatures (uniform, one-tile or thumbnail dominance) over the images
diagnosis = it.diagnose_images(model, processor, images)
print({k: round(v, 4) for k, v in diagnosis.stats.items()})
print(diagnosis.signatures or "no failure signature")
