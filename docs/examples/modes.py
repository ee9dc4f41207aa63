import gswa_plugin
from gswa_plugin.tools.influence import compare_modes
from gswa_plugin.testing.tiny import tiny_internvl, tiny_internvl_processor, sample_image

model = tiny_internvl(image_size=56)
processor = tiny_internvl_processor(image_size=56, max_patches=6)
inputs = processor(text=["<IMG_CONTEXT> describe the image"], images=[sample_image("coffee")], return_tensors="pt")

# Can the weights move the answer at all? Uniform vs peaked weights, in every mode:
for r in compare_modes(model, inputs, {"hidden_size": 32, "num_heads": 4}):
    print(f"{r.mode:<10} KL {r.kl:.2e}  max |logit change| {r.max_logit_change:.3f}  (logit scale {r.logit_scale:.3f})")

# Train with the weights acting inside the language model's attention:
gswa_plugin.enable(model, {"mode": "attn_bias", "hidden_size": 32, "num_heads": 4})
out = model.generate(**inputs, max_new_tokens=4)  # works with the KV cache
