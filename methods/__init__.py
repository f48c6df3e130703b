"""Built-in anomaly-detection methods (``zsbench.methods``): one module per method.

Importing this package imports every module in it, and each module registers its method with
``@register_method``. A module that fails to import is logged and skipped (its error is kept in
:data:`FAILED_IMPORTS`); the other methods still register.
"""

from __future__ import annotations

from zsbench.registry import import_submodules

#: module name -> import error of the modules that were skipped, for diagnostics
FAILED_IMPORTS: dict[str, str] = import_submodules(__name__, __path__, "Method")
