"""The model zoo: one module per model, each registering itself with `@register_model`.

Every module in this package is imported here, so adding a model is adding one file.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
