"""`python -m bertforge ...`: the same dispatcher as the `bertforge` console script."""

import sys

from bertforge.cli import main

sys.exit(main())
