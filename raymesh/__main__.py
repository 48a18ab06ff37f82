"""``python -m raymesh``: the same command line as the ``raymesh`` console script."""

import sys

from raymesh.cli import main

sys.exit(main())
