"""Pre-training tasks. Importing this package imports every task module in it, so a new task is
one new module here (plus a schedule line): its ``@register_task`` class registers itself."""

from __future__ import annotations

import importlib
import pkgutil

from .base import IGNORE, PretrainTask, get_task_class, register_task, registered_tasks

_HELPER_MODULES = {"base", "packing"}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name not in _HELPER_MODULES and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["IGNORE", "PretrainTask", "get_task_class", "register_task", "registered_tasks"]
