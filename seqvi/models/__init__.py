"""Generative models (p only). ``MODELS`` maps recipe names to classes."""

from seqvi.models.base import SequentialModel
from seqvi.models.dmm import DMM
from seqvi.models.lgssm import LGSSM
from seqvi.models.rssm import RSSM
from seqvi.models.srnn import SRNN
from seqvi.models.storn import STORN
from seqvi.models.svg import SVG
from seqvi.models.vrnn import VRNN

MODELS: dict[str, type[SequentialModel]] = {
    "vrnn": VRNN,
    "srnn": SRNN,
    "dmm": DMM,
    "lgssm": LGSSM,
    "svg": SVG,
    "rssm": RSSM,
    "storn": STORN,
}

# Constructor arguments the data supplies (from the store), not the recipe.
DATA_ARGS = ("x_dim", "likelihood", "frame_shape", "input_dim")
