"""Add the distinctiveness term to your own training loop (runs on CPU in seconds)."""

import torch

import gswa_plugin
from gswa_plugin.testing.tiny import sample_image, tiny_internvl, tiny_internvl_processor
from gswa_plugin.weighting import distinctiveness_loss

model = tiny_internvl(image_size=56)
processor = tiny_internvl_processor(image_size=56, max_patches=6)
inputs = processor(text=["<IMG_CONTEXT> describe the image"], images=[sample_image("coffee")], return_tensors="pt")
gswa_plugin.enable(model, {"mode": "value", "summary": "mean", "score_input": "squared_deviation",
                           "hidden_size": 32, "num_heads": 4})

seen = {}  # what GSWA read and gave in the latest forward: summaries, layout, flat view weights
model.gswa.register_forward_hook(lambda module, args, w: seen.update(summaries=args[0], layout=args[1], weights=w))
gswa_params = list(model.gswa.parameters())
host_params = [p for n, p in model.named_parameters() if not n.startswith("gswa.")]
opt = torch.optim.AdamW([{"params": host_params, "lr": 1e-4}, {"params": gswa_params, "lr": 3e-3}])

model.train()
for step in range(3):
    loss = model(**inputs, labels=inputs["input_ids"]).loss  # your task loss
    opt.zero_grad()
    loss.backward(retain_graph=True)  # host and GSWA learn from the task
    term = distinctiveness_loss(seen["weights"], seen["summaries"], seen["layout"], temperature=1.0)
    (1.0 * term).backward(inputs=gswa_params)  # weight 1; GSWA only: the summaries are the host's
    opt.step()
    print(f"step {step}: task loss {float(loss.detach()):.3f}, distinctiveness term {float(term.detach()):.4f}")
print("tile weights:", [round(float(w), 3) for w in gswa_plugin.last_weights(model)[0]])
