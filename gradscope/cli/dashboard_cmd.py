"""`gradscope dashboard`: serve the Dash dashboard over a folder of run files."""

import errno
import ipaddress
import socket
from pathlib import Path

from gradscope.errors import UsageError

DEFAULT_HOST = (
    "127.0.0.1"  # loopback only: the page reads run files, so it is not shared by default
)
DEFAULT_PORT = 8050


def register(subparsers) -> None:
    """Add the `dashboard` subcommand."""
    parser = subparsers.add_parser(
        "dashboard",
        help="browse and compare run files in a web dashboard",
        description="Serve a dashboard over every run file under --runs (recursively): flow "
        "curves, heatmaps, training curves and diagnosis; runs still being written refresh live.",
    )
    parser.add_argument("--runs", default="runs", help="folder of run files (default: runs)")
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default: {DEFAULT_HOST}; 0.0.0.0 shares it on the network)",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})"
    )
    parser.set_defaults(func=run)


def dashboard_url(host: str, port: int) -> str:
    """The URL a browser opens for a server listening on host:port."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown:
        shown = f"[{shown}]"  # an IPv6 address
    return f"http://{shown}:{port}/"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_can_listen(host: str, port: int) -> None:
    """Raise UsageError, in one line, unless a server can listen on host:port right now."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: not a known address ({e.strerror})") from e
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself does
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"port {port} on {host} is in use (another dashboard?); pass --port N"
                ) from e
            if e.errno == errno.EADDRNOTAVAIL:
                raise UsageError(
                    f"--host {host} is not an address of this machine; use 127.0.0.1 (this "
                    "machine only) or 0.0.0.0 (every interface)"
                ) from e
            raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e


def run(args) -> int:
    """Check the arguments, then serve the dashboard until interrupted."""
    runs = Path(args.runs)
    if runs.exists() and not runs.is_dir():
        raise UsageError(
            f"--runs {args.runs}: is a file, not a folder; pass the folder that holds the run "
            f"files (--runs {runs.parent})"
        )
    if not runs.is_dir():
        raise UsageError(
            f"runs folder {args.runs!r} does not exist; record a run first or pass --runs FOLDER"
        )
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, got {args.port}")
    check_can_listen(args.host, args.port)
    from gradscope.app import create_app  # imports dash: only for this command

    app = create_app(runs)
    if not _is_loopback(args.host):
        print(
            f"warning: listening on {args.host}: anyone who can reach this port can read the "
            "run files under the runs folder"
        )
    print(f"gradscope dashboard: {runs} at {dashboard_url(args.host, args.port)} (Ctrl+C stops)")
    try:
        app.run(host=args.host, port=args.port, debug=False)
    except OSError as e:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from e
    return 0
