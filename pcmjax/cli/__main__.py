"""``python -m pcmjax.cli``: the ``pcmjax`` command."""

import sys

from pcmjax.cli._cli import main

sys.exit(main())
