"""Built-in probes, one module each. Importing this package imports every module in
it, and each registers its probe with ``@register_probe``."""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
