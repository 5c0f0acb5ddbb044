"""Bootstrap's stylesheet served by the dashboard itself (no CDN: the page works offline)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from flask import Blueprint

from gradscope.errors import UsageError

# Bootstrap 5's compiled CSS as the Bootstrap-Flask wheel ships it (dash-bootstrap-components
# ships none: its `themes` are CDN addresses).
CSS_PACKAGE = "flask_bootstrap"
CSS_FOLDER = "static/bootstrap5/css"
CSS_FILE = "bootstrap.min.css"
URL_PATH = "/_gradscope/css"


def bootstrap_css_folder() -> Path:
    """The folder holding bootstrap.min.css; UsageError saying what to install if absent."""
    try:
        folder = Path(str(resources.files(CSS_PACKAGE) / CSS_FOLDER))
    except ModuleNotFoundError as e:
        raise UsageError(
            "the dashboard needs Bootstrap's stylesheet from the bootstrap-flask package; "
            "install it with: pip install bootstrap-flask"
        ) from e
    if not (folder / CSS_FILE).is_file():
        raise UsageError(f"{folder / CSS_FILE} is missing; reinstall bootstrap-flask")
    return folder


def serve_bootstrap_css(app) -> str:
    """Serve bootstrap.min.css from the dashboard's own server; returns its page-relative URL."""
    blueprint = Blueprint(
        "gradscope_css",
        __name__,
        static_folder=str(bootstrap_css_folder()),
        static_url_path=URL_PATH,
    )
    prefix = app.config.routes_pathname_prefix.rstrip("/")  # the app's own, under WSGI too
    app.server.register_blueprint(blueprint, url_prefix=prefix or None)
    return app.get_relative_path(f"{URL_PATH}/{CSS_FILE}")
