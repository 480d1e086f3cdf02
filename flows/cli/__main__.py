"""``python -m emfuse.flows.cli``: the ``emfuse`` command."""

import sys

from . import main

if __name__ == "__main__":  # not when a spawned process (the batch's figures) imports it
    sys.exit(main())
