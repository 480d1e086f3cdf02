"""Names of a package that load on first use (module ``__getattr__``, PEP 562).

``import emfuse`` and ``import emfuse.pipeline.fusion`` stay light (no Dask, no Prefect, no
torch) while the public names of the heavier modules are still attributes of the package.
A leaf module: it imports nothing of emfuse, so every layer may use it.

Examples
--------
>>> import types
>>> pkg = types.ModuleType("pkg")
>>> pkg.__getattr__, pkg.__dir__ = on_first_use("pkg", {"sqrt": ("math", "sqrt")}, vars(pkg))
>>> pkg.sqrt(4.0), "sqrt" in vars(pkg)
(2.0, True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def on_first_use(package: str, names: Mapping[str, tuple[str, str]],
                 namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: each of ``names`` (public name ->
    (module, attribute); a module name may be relative to ``package``) is imported when first
    asked for, then kept in ``namespace`` (the package's globals) as a plain attribute."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attribute = names[name]
        value = getattr(import_module(module, package), attribute)
        namespace[name] = value  # once loaded, a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
