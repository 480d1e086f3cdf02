"""``python -m emfuse.flows.cli``: the ``emfuse`` command."""

import sys

from . import main

sys.exit(main())
