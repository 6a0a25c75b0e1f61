"""prunelab: how much of a network can be removed, how, and at what cost.

Command line: ``python -m prunelab method=structured ratio=0.5`` (see README). In Python::

    import prunelab
    mask = prunelab.prune(model, method="unstructured", scope="global", ratio=0.9)
    mask.apply(model)
"""

from .pruning import Mask, prune, shrink

__version__ = "0.1.0"
__all__ = ["Mask", "prune", "shrink", "run", "__version__"]


def run(cfg):
    """Run one experiment from a composed config (see prunelab.runner.run)."""
    from .runner import run as _run

    return _run(cfg)
