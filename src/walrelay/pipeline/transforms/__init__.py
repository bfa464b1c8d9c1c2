"""Per-destination transforms: steps a destination's events pass, in the order
written, before its format and sink (see README "Transforms").

One module per step kind (``filter``, ``select`` for include/exclude,
``rename``, ``mask``, ``hash``, ``cast``, ``set_fields``, ``flatten``,
``route``, ``key``, ``python_hook``), ``chain`` runs them, ``build`` makes a
chain from the config and checks it against the catalog, ``resume`` retries
the events a step failed on.
"""

from walrelay.pipeline.transforms.build import Catalog, build_chain, build_chains
from walrelay.pipeline.transforms.chain import SchemaDrift, StepError, TransformChain
from walrelay.pipeline.transforms.resume import ResumeHook

__all__ = [
    "Catalog",
    "ResumeHook",
    "SchemaDrift",
    "StepError",
    "TransformChain",
    "build_chain",
    "build_chains",
]
