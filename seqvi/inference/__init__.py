"""Inference procedures (q only). ``INFERENCE`` maps recipe names to classes.

Each is an ``Inference`` module built as ``cls(model, **recipe_kwargs)``;
the step contract is in ``seqvi.inference.base``.
"""

from seqvi.inference.base import Inference, Posterior

from seqvi.inference.direct import DirectFilter
from seqvi.inference.iterative import AVF

INFERENCE = {
    "direct": DirectFilter,
    "avf": AVF,
}
