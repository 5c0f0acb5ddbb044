"""The gradscope dashboard: a Dash app over the run files of one folder."""

from __future__ import annotations

import os

import dash
from gradscope.app._assets import serve_bootstrap_css
from gradscope.app.callbacks import register_callbacks
from gradscope.app.layout import page
from gradscope.app.probe_view import register_probe_callbacks
from gradscope.app.run_index import RunIndex


def create_app(runs_dir: str | os.PathLike) -> dash.Dash:
    """A Dash app showing the runs under `runs_dir`; raises UsageError if it is not a folder."""
    index = RunIndex(runs_dir)
    root_label = str(runs_dir)
    app = dash.Dash(
        __name__,
        title="gradscope",
        update_title=None,
        serve_locally=True,  # no CDN: the page works offline
    )
    app.config.external_stylesheets = [serve_bootstrap_css(app)]
    app.layout = lambda: page(index, root_label)  # a function: each load rescans the folder
    register_callbacks(app, index, root_label)
    register_probe_callbacks(app, index, root_label)
    return app
