"""prunelab: how much of a network can be removed, how, and at what cost.

Command line: ``python -m prunelab method=structured ratio=0.5`` (see README). In Python::

    import prunelab
    pruned = prunelab.prune(model, method="unstructured", scope="global", ratio=0.9)
    pruned.apply(model)

The package, bottom to top (a module imports only from its own floor or below; tests/test_imports.py
checks it): ``names``, ``errors``, ``paths``, ``redact``, ``contracts``, ``plugins`` -> ``pruning`` -> ``data``,
``models`` -> ``deploy``, ``tracking`` -> ``config`` -> ``experiment`` (the runner and its stages)
-> ``analysis`` -> ``sweep``, ``cli``.
"""

from importlib.metadata import version

from .pruning import Mask, Pruned, Pruner, prune, shrink

__version__ = version("prunelab")  # pyproject.toml's, the one home of the version (CHANGELOG.md follows it)
__all__ = ["Mask", "Pruned", "Pruner", "__version__", "prune", "run", "shrink"]


def run(cfg):
    """Run one experiment from a composed config (see :func:`prunelab.experiment.runner.run`)."""
    from .experiment.runner import run as _run

    return _run(cfg)
