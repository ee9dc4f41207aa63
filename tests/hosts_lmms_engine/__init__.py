"""lmms-engine end-to-end fixtures: a tiny model, a tiny dataset in lmms-engine's format, a CPU launcher."""
