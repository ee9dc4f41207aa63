"""llava end-to-end fixtures: a tiny llava checkpoint and a tiny dataset in llava's format."""
