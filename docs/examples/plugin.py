"""An example gswa plugin: a training-free weighting variant, an observer and a wrapper."""

from torch import nn

from gswa_plugin import hookimpl


class SummaryNormScorer(nn.Module):
    """Scores each tile by the RMS of its summary vector (no trained parameters)."""

    def __init__(self, summary_dim, config):
        super().__init__()

    def forward(self, tokens, tile_mask):
        # tokens: [images, 1 + tiles, dim] with the thumbnail in slot 0 -> logits [images, tiles]
        return tokens[:, 1:].float().pow(2).mean(-1).sqrt()


@hookimpl
def gswa_register_variants(register):
    register("summary_norm", SummaryNormScorer)


LOGGED = []


@hookimpl
def gswa_weights_computed(weights):
    LOGGED.append([w.tolist() for w in weights])  # e.g. send them to your experiment tracker


@hookimpl(wrapper=True)
def gswa_process_tiles(batch):
    batch.extra["images_seen"] = batch.layout.num_images  # on the way in: the batch as the host laid it out
    result = yield  # the next implementation (the built-in) computes and applies the weights
    assert result.weights is not None  # on the way out: the weighted batch
    return result
