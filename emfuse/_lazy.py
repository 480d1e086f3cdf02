"""Names of a package that load on first use (module ``__getattr__``, PEP 562), and modules
that load at their first attribute (:func:`lazy_module`).

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
from types import ModuleType
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


class _LazyModule(ModuleType):
    def __getattr__(self, attribute: str) -> Any:
        return getattr(import_module(self.__name__), attribute)  # a dict lookup once imported


def lazy_module(name: str) -> ModuleType:
    """A stand-in for module ``name`` that imports it at its first attribute access, for a
    heavy module that only some paths of a module use (``ndimage = lazy_module("scipy.ndimage")``
    at the top, ``ndimage.uniform_filter(...)`` where it is needed).

    Examples
    --------
    >>> missing = lazy_module("no_such_module")  # nothing is imported yet
    >>> missing.anything
    Traceback (most recent call last):
    ModuleNotFoundError: No module named 'no_such_module'
    >>> json = lazy_module("json")
    >>> json.dumps([1, 2])
    '[1, 2]'
    """
    return _LazyModule(name)
