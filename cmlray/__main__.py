"""``python -m cmlray``: the same as the ``cmlray`` command."""

import sys

from cmlray.cli import main

sys.exit(main())
