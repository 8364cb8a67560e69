"""Generative models (p only). ``MODELS`` maps recipe names to classes."""

from seqvi.models.base import SequentialModel
from seqvi.models.vrnn import VRNN

MODELS: dict[str, type[SequentialModel]] = {
    "vrnn": VRNN,
}

# Constructor arguments the data supplies (from the store), not the recipe.
DATA_ARGS = ("x_dim", "likelihood", "frame_shape")
