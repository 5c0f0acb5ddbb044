"""PNG export of figures through plotly/kaleido: print styling, sizes, and the Chrome to render."""

import atexit
import contextlib
import os
import platform
import shutil
import warnings
from pathlib import Path

from gradscope.errors import UsageError

# Executable names looked up on PATH, in order (Chrome first, then Chromium builds).
CHROME_NAMES = (
    "google-chrome",
    "google-chrome-stable",
    "chrome",
    "chromium",
    "chromium-browser",
)
BROWSER_PATH_ENV = "BROWSER_PATH"  # the variable kaleido (via choreographer) honours too
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PNG_SIDE = 32767  # Chrome's largest canvas side, in pixels
MAX_PNG_PIXELS = 268_435_456  # Chrome's largest canvas area (16,384 squared)
PLOTLY_DEFAULT_SIZE = (700, 500)  # what plotly renders a figure without a size at

TEMPLATES = ("plotly", "paper")  # the dashboard's look, or white for papers
DEFAULT_FONT_SIZE = 14  # base font of an exported PNG, in layout pixels
DEFAULT_HEIGHT = 550  # figures that do not size themselves (flow, curves)
PANEL_WIDTH = 480  # of each heatmap panel, plus room for row labels and the colour bar
LABELS_WIDTH = 320
DEFAULT_WIDTHS = {"flow": 1100, "curves": 1300, "ratio": 1000}  # heatmap: from its panels
SUBPLOT_WIDTH = 450  # spp and widths: per panel, plus room for the legend
LEGEND_WIDTH = 330

_renderer_started: list = []  # the Chrome path once kaleido's renderer runs in this process


def chrome_install_command() -> str:
    """The one command that installs a Chrome kaleido can use on this machine."""
    if platform.system() == "Linux" and shutil.which("apt-get"):
        return "apt-get install -y chromium"
    return "plotly_get_chrome -y"


def find_chrome() -> str:
    """Path of the Chrome/Chromium used for PNG export; UsageError saying how to install one.

    Order: $BROWSER_PATH (must then be executable), Chrome/Chromium on PATH, then kaleido's own
    lookup (the copy `plotly_get_chrome` downloads, typical install folders).
    """
    chosen = os.environ.get(BROWSER_PATH_ENV)
    if chosen:
        if not (Path(chosen).is_file() and os.access(chosen, os.X_OK)):
            raise UsageError(
                f"{BROWSER_PATH_ENV}={chosen!r} is not an executable Chrome; "
                "unset it or point it at one"
            )
        return chosen
    for name in CHROME_NAMES:
        found = shutil.which(name)
        if found:
            return found
    downloaded = _downloaded_chrome()
    if downloaded:
        return downloaded
    raise UsageError(
        "PNG export needs Chrome or Chromium and none was found; install one with: "
        f"{chrome_install_command()}"
    )


def _downloaded_chrome():
    """A Chrome that kaleido's own lookup finds (its downloaded copy, typical install paths)."""
    try:
        from choreographer.browsers.chromium import Chromium
    except ImportError:  # kaleido < 1 has no choreographer; PATH lookup above still applies
        return None
    found = Chromium.find_browser(skip_local=False)
    return found if found and Path(found).is_file() else None


def default_size(fig, figure: str | None = None) -> tuple[int, int]:
    """(width, height) of the PNG of `fig` when none is asked for: the figure's own layout size
    if set (heatmaps set their height from their layer count), else one wide enough for the
    kind of figure (`figure`: heatmap, flow, curves, ratio, spp, widths) to label its layers
    and legend."""
    height = fig.layout.height or DEFAULT_HEIGHT
    if fig.layout.width:
        return int(fig.layout.width), int(height)
    if figure == "heatmap":
        panels = sum(1 for trace in fig.data if trace.type == "heatmap")
        return PANEL_WIDTH * max(panels, 1) + LABELS_WIDTH, int(height)
    if figure in ("spp", "widths"):
        panels = sum(1 for key in fig.layout.to_plotly_json() if key.startswith("xaxis"))
        return SUBPLOT_WIDTH * max(panels, 1) + LEGEND_WIDTH, int(height)
    return DEFAULT_WIDTHS.get(figure, 1000), int(height)


def style_for_print(fig, template: str = "plotly", font_size: int | None = DEFAULT_FONT_SIZE):
    """`fig` styled for a PNG: base font `font_size` (titles larger), and with
    template="paper" a white background, black axes and light grid lines. Returns `fig`."""
    if template not in TEMPLATES:
        raise UsageError(f"template must be one of {', '.join(TEMPLATES)}, not {template!r}")
    if font_size is not None:
        if not 6 <= font_size <= 72:
            raise UsageError(f"font size must be between 6 and 72 pixels, not {font_size!r}")
        title_size = round(font_size * 1.3)
        fig.update_layout(font={"size": font_size}, title={"font": {"size": title_size}})
    if template == "paper":
        fig.update_layout(
            template="simple_white",
            font={"family": "Helvetica, Arial, sans-serif", "color": "black"},
        )
        fig.update_xaxes(showgrid=True, gridcolor="#e8e8e8", mirror=True)
        fig.update_yaxes(showgrid=True, gridcolor="#e8e8e8", mirror=True)
    return fig


def check_png_size(width=None, height=None, scale=1) -> None:
    """Raise UsageError unless the PNG fits Chrome's canvas (checked before any rendering).

    A side given as None is not known yet: only the sides given are checked (and the area when
    both are); `png_size` gives the size a figure is rendered at.
    """
    for name, value in (("width", width), ("height", height)):
        if value is not None and (int(value) != value or value < 10):
            raise UsageError(f"{name} must be a whole number of pixels >= 10, not {value!r}")
    if not scale > 0:
        raise UsageError(f"scale must be > 0, not {scale!r}")
    sides = [value * scale for value in (width, height) if value is not None]
    too_long = any(side > MAX_PNG_SIDE for side in sides)
    if too_long or (len(sides) == 2 and sides[0] * sides[1] > MAX_PNG_PIXELS):
        shown = " x ".join(f"{side:,.0f}" for side in sides)
        given = " x ".join(f"{value:,}" for value in (width, height) if value is not None)
        raise UsageError(
            f"a {shown} pixel PNG ({given} at scale {scale:g}) is too large: at most "
            f"{MAX_PNG_SIDE:,} pixels a side and {MAX_PNG_PIXELS:,} in all (width x height x "
            "scale squared); choose a smaller --width, --height or --scale"
        )


def png_size(fig, width=None, height=None) -> tuple[int, int]:
    """(width, height) in layout pixels that `fig` is rendered at: those given, else the
    figure's own layout size, else plotly's defaults (700 x 500)."""
    given = (width, height)
    own = (fig.layout.width, fig.layout.height)
    return tuple(
        value if value is not None else int(own[i] or PLOTLY_DEFAULT_SIZE[i])
        for i, value in enumerate(given)
    )


def figure_png_bytes(fig, width=None, height=None, scale=1) -> bytes:
    """The figure rendered as PNG bytes (width x height layout pixels, times `scale`)."""
    width, height = png_size(fig, width, height)
    check_png_size(width, height, scale)
    chrome = find_chrome()
    import kaleido
    import plotly.io as pio

    # One Chrome kept open for the process: later exports take well under a second instead of
    # a browser start each; plotly's to_image uses it when it is running.
    if not _renderer_started:
        kaleido.start_sync_server(path=chrome, silence_warnings=True)
        _renderer_started.append(chrome)
        atexit.register(stop_renderer)  # runs before kaleido's own (atexit is last-in first-out)
    try:
        with warnings.catch_warnings():
            # plotly always passes kopts, which the running server rightly does not need.
            warnings.filterwarnings("ignore", message="The kopts argument is ignored")
            data = pio.to_image(fig, format="png", width=width, height=height, scale=scale)
    except RuntimeError as e:  # kaleido reports a browser that fails to start this way
        raise UsageError(f"rendering the PNG with {chrome} failed: {e}") from e
    if not data.startswith(PNG_SIGNATURE):
        raise UsageError("kaleido returned data that is not a PNG; check the kaleido install")
    return data


def stop_renderer() -> None:
    """Close the Chrome that renders PNGs, if one was started; quietly, as at exit.

    Chrome may still be writing its profile while kaleido removes the temporary folder
    ("Directory not empty: 'Default'"): the PNGs are written by then, so that is no error.
    """
    if not _renderer_started:
        return
    _renderer_started.clear()
    import kaleido

    with contextlib.suppress(Exception):
        kaleido.stop_sync_server(silence_warnings=True)


def write_png(fig, path, width=None, height=None, scale=1) -> Path:
    """Write the figure as a PNG file at `path` (must end in .png); returns the path."""
    check_png_size(*png_size(fig, width, height), scale)
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UsageError(f"output file {path} must end in .png")
    if not path.parent.is_dir():
        raise UsageError(f"output folder {path.parent} does not exist; create it first")
    path.write_bytes(figure_png_bytes(fig, width=width, height=height, scale=scale))
    return path
