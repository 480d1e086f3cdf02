"""Run Python as on a lent GPU machine's image: the import of every package the image lacks fails.

Written as ``sitecustomize.py`` into a folder put first on ``PYTHONPATH`` (with ``blocked.json``
beside it, the top-level module names to refuse), so that every process started with that path,
pytest's included, refuses them as a missing package would be refused.
"""

import json
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(_here, "blocked.json")) as _f:
    _BLOCKED = frozenset(json.load(_f))


class _DeviceImage:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {top!r} (not on the device image)", name=top)
        return None


sys.meta_path.insert(0, _DeviceImage())
