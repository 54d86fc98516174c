"""Recipe stages: thin adapters from the recipe layer to the methods' plain functions.

Importing this package registers every stage module in it (one per area), so a
new area only adds a file here.
"""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
