"""Inference procedures (q only). ``INFERENCE`` maps recipe names to classes.

Each is an ``Inference`` module built as ``cls(model, **recipe_kwargs)``;
the step contract is in ``seqvi.inference.base``.
"""

from seqvi.inference.base import Inference, Posterior
from seqvi.inference.combiner import Combiner
from seqvi.inference.direct import DirectFilter
from seqvi.inference.iterative import AVF
from seqvi.inference.smoothing import Smoothing
from seqvi.inference.svg_posterior import SVGPosterior

__all__ = ["INFERENCE", "Inference", "Posterior"]

INFERENCE = {
    "direct": DirectFilter,
    "smoothing": Smoothing,
    "combiner": Combiner,
    "svg_posterior": SVGPosterior,
    "recurrent": SVGPosterior,     # the same q under its general name (STORN's recognition RNN)
    "avf": AVF,
}
