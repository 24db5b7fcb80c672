"""``python -m pcmjax.fit DATA.csv --family hermes --out model.json``."""

import sys

from pcmjax.fit._cli import cli_main

if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:], prog="python -m pcmjax.fit"))
