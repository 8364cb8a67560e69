"""Inference procedures (q only). ``INFERENCE`` maps recipe names to classes.

Each is an ``nn.Module`` built as ``cls(model, **recipe_kwargs)`` with
``posterior(model, x_t, state, p_z) -> Normal``.
"""

from seqvi.inference.direct import DirectFilter

INFERENCE = {
    "direct": DirectFilter,
}
