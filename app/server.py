"""The WSGI entry point: `server` serves the runs folder named by $GRADSCOPE_RUNS."""

import os

from gradscope.app import create_app

RUNS_ENV_VAR = "GRADSCOPE_RUNS"
DEFAULT_RUNS_DIR = "runs"  # the same default as `gradscope dashboard --runs`

# e.g. GRADSCOPE_RUNS=/data/runs gunicorn app.server:server
dash_app = create_app(os.environ.get(RUNS_ENV_VAR, DEFAULT_RUNS_DIR))
server = dash_app.server
