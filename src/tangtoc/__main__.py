"""``python -m tangtoc`` is the ``tangtoc`` command."""

import sys

from tangtoc.cli import main

sys.exit(main())
