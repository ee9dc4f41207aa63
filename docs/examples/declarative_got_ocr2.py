"""GSWA on GOT-OCR2, a host without a built-in adapter, from the YAML declaration alone.

With a released checkpoint, load the model with ``GotOcr2ForConditionalGeneration.from_pretrained``
and its ``AutoProcessor``; here a tiny random one is built offline so that this file runs as a test.
"""

from pathlib import Path

import torch

import gswa_plugin
from gswa_plugin.testing.tiny import sample_image
from gswa_plugin.testing.tiny_more import got_ocr2_inputs, tiny_got_ocr2

model = tiny_got_ocr2()
gswa_plugin.enable(model, Path(__file__).with_name("declarative_got_ocr2.yaml"))

inputs = got_ocr2_inputs([sample_image("page")])  # the processor's own OCR prompt, crops + thumbnail
with torch.no_grad():
    model(**inputs)
print(gswa_plugin.last_weights(model))  # one weight per crop of the page
