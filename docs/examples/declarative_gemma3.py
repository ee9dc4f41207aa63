"""GSWA on Gemma 3 pan-and-scan, a host without a built-in adapter, from the YAML declaration
alone (no ``set_tiles``), checked with non-uniform weights before any training.

With a released checkpoint, load ``Gemma3ForConditionalGeneration.from_pretrained`` and its
``AutoProcessor`` (call it with ``do_pan_and_scan=True``) and put that tokenizer's joiner ids in
the YAML; here a tiny random model is built offline so that this file runs as a test.
"""

from pathlib import Path

import torch

import gswa_plugin
from gswa_plugin.testing.tiny import sample_image
from gswa_plugin.testing.tiny_more import gemma3_inputs, tiny_gemma3, tiny_gemma3_processor

# The joiner ids of the YAML come from the processor's tokenizer:
processor = tiny_gemma3_processor()
ids = processor.tokenizer(
    " and here are some crops to help you see better \n\n \n\n", add_special_tokens=False
).input_ids
print(sorted(set(ids)))  # the integers listed in declarative_gemma3.yaml

model = tiny_gemma3()
gswa_plugin.enable(model, Path(__file__).with_name("declarative_gemma3.yaml"))  # variant: cosine

images = [sample_image("astronaut").resize((200, 100)), sample_image("coffee").resize((300, 100))]
inputs = gemma3_inputs(images, ["<start_of_image> describe the image", "what is in the picture <start_of_image> ?"])
with torch.no_grad():
    model(**inputs)
weights = gswa_plugin.last_weights(model)  # one weight per crop: 2 for the first image, 3 for the second
print(weights)
# A working retrofit: non-uniform (training-free cosine) weights with mean 1 per image.
assert [w.shape[0] for w in weights] == [2, 3]
assert all(abs(float(w.mean()) - 1) < 1e-5 and not torch.allclose(w, torch.ones_like(w)) for w in weights)
