"""Run the command line as `python -m gradscope.cli`."""

import sys

from gradscope.cli import main

sys.exit(main())
