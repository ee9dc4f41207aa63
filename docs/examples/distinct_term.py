"""The distinctiveness term in your own training loop (runs on CPU in seconds)."""

import torch

import gswa_plugin
from gswa_plugin.testing.tiny import sample_image, tiny_internvl, tiny_internvl_processor

model = tiny_internvl(image_size=56)
processor = tiny_internvl_processor(image_size=56, max_patches=6)
inputs = processor(text=["<IMG_CONTEXT> describe the image"], images=[sample_image("coffee")], return_tensors="pt")
gswa_plugin.enable(model, {"mode": "value", "summary": "mean", "score_input": "squared_deviation",
                           "distinct_weight": 1.0, "hidden_size": 32, "num_heads": 4})

gswa_params = list(model.gswa.parameters())
host_params = [p for n, p in model.named_parameters() if not n.startswith("gswa.")]
opt = torch.optim.AdamW([{"params": host_params, "lr": 1e-4}, {"params": gswa_params, "lr": 3e-3}])

model.train()
for step in range(3):
    task = model(**inputs, labels=inputs["input_ids"]).loss  # your task loss
    term = gswa_plugin.aux_loss(model)  # distinct_weight x the term; its gradient reaches GSWA only
    opt.zero_grad()
    (task + term).backward()
    opt.step()
    print(f"step {step}: task loss {float(task.detach()):.3f}, distinctiveness term {float(term.detach()):.4f}")
print("tile weights:", [round(float(w), 3) for w in gswa_plugin.last_weights(model)[0]])
