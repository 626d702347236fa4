"""Pool sources, registered by name: built-in offline sets (builtin.py) and users' files (files.py).

To add a source, add one module here that calls `register_source`; every
module of this package is imported, so the recipe accepts the new name.
"""

from __future__ import annotations

import importlib
import pkgutil

from bidsml.data.sources.base import SOURCES, Source, load_source, register_source

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["SOURCES", "Source", "load_source", "register_source"]
