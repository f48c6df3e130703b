"""Built-in anomaly-detection methods (``zsbench.methods``): one module per method.

Importing this package imports every module in it, and each module registers its method with
``@register_method``. A module that fails to import is logged and skipped (its error is kept in
:data:`FAILED_IMPORTS`); the other methods still register.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

logger = logging.getLogger(__name__)

FAILED_IMPORTS: dict[str, str] = {}  # module name -> error, for diagnostics


def _import_all() -> None:
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{__name__}.{module.name}")
        except Exception as err:  # one broken method must not hide the others
            FAILED_IMPORTS[module.name] = f"{type(err).__name__}: {err}"
            logger.warning("Method module %r was skipped: %s", module.name, err)


_import_all()
