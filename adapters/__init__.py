"""Built-in dataset adapters (``zsbench.adapters``): one module per dataset.

Importing this package imports every module in it, and each module registers its adapter with
``@register_adapter``. A module that fails to import (for example because an optional
dependency such as nibabel is missing) is logged and skipped; the others still register.
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
        except Exception as err:  # an optional dependency must not hide the other adapters
            FAILED_IMPORTS[module.name] = f"{type(err).__name__}: {err}"
            logger.warning("Dataset adapter module %r was skipped: %s", module.name, err)


_import_all()
