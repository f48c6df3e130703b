"""Built-in dataset adapters (``zsbench.adapters``): one module per dataset.

Importing this package imports every module in it, and each module registers its adapter with
``@register_adapter``. A module that fails to import (for example because an optional
dependency such as nibabel is missing) is logged and skipped; the others still register.
"""

from __future__ import annotations

from zsbench.registry import import_submodules

#: module name -> import error of the modules that were skipped, for diagnostics
FAILED_IMPORTS: dict[str, str] = import_submodules(__name__, __path__, "Dataset adapter")
