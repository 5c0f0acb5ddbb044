"""`python -m gradscope`: the command line (also what torchrun starts with `-m gradscope`)."""

import sys

from gradscope.cli import main

sys.exit(main())
