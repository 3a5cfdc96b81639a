"""Conformance checks for pruning methods, importable for your own methods and models.

``check_method("submodular", architectures()["timm-vit"])`` runs every named check
(:data:`CHECKS`) of a registered method on an architecture of the conformance set;
the test suite parametrises the same checks over every registered method and every
architecture, one test per check (``tests/test_methods_conformance.py``). A method
you register (:func:`prunekit.methods.register`) is covered with no test edits.
"""

from .architectures import Architecture, architectures
from .checks import CHECKS, NEED_RUN, Case, Refused, check_method

__all__ = ["Architecture", "architectures", "CHECKS", "NEED_RUN", "Case", "Refused",
           "check_method"]
