"""The dashboard under load: clients polling live runs through gunicorn, as the page does.

Used by `python benchmarks/dashboard.py --clients N`. A child process writes two live runs
(ResNet-56-sized: 115 layers, 12 statistics, a history of records, then 10 new records a
second each); `gunicorn gradscope.app.server:server` serves them with `--workers` workers on
127.0.0.1; each client loads the page (its HTML, layout, callback graph and first callbacks)
(the clients start spread over one interval, as pages opened at different moments) and
then, every `--interval` seconds for `--seconds`, does what the page's timer does: asks
for the run list, and when the runs grew, redraws what depends on them (the controls first,
then the step label, the four panels and the diagnosis, six requests at a time as a browser
sends them). Every request's latency is kept; a request fails on an HTTP error, a callback
error or no answer within REQUEST_TIMEOUT seconds.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REQUEST_TIMEOUT = 10.0  # seconds: a request not answered by then failed
SERVER_START_TIMEOUT = 120.0  # seconds for gunicorn's workers to listen and answer
BROWSER_CONNECTIONS = 6  # requests a browser sends to one host at once
LIVE_LAYERS, LIVE_STATS = 115, 12  # ResNet-56's watched layers, every statistic
LIVE_HISTORY = 5000  # records each live run holds when the clients start
LIVE_RECORDS_PER_SECOND = 10
TIMER = ("timer", "n_intervals")  # the page's poll (app/ids.py)
VERSIONS = ("run-versions", "data")  # what the timer changes when runs grow
GOAL_P95_SECONDS = 1.0


@dataclass
class Request:
    """One answered (or failed) request."""

    kind: str  # "page", "timer", "controls", "panel flow", ...
    seconds: float
    ok: bool
    error: str = ""


@dataclass
class Results:
    """Every client's requests, appended from many threads."""

    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request: Request) -> None:
        with self.lock:
            self.requests.append(request)


def _id_key(component_id) -> str:
    """The id as Dash names it in its callback graph: the string, or the dict's sorted JSON."""
    if isinstance(component_id, dict):
        return json.dumps(component_id, sort_keys=True, separators=(",", ":"))
    return str(component_id)


def _layout_values(node, values: dict) -> None:
    """(id key, property) -> value of every component with an id in a layout tree."""
    if isinstance(node, list):
        for child in node:
            _layout_values(child, values)
        return
    if not isinstance(node, dict) or "props" not in node:
        return
    props = node["props"]
    if "id" in props:
        key = _id_key(props["id"])
        for name, value in props.items():
            values[(key, name)] = value
    for value in props.values():
        if isinstance(value, (dict, list)):
            _layout_values(value, values)


def _outputs(output: str) -> list[tuple[str, str]]:
    """The (id key, property) pairs of a callback's output string."""
    parts = output[2:-2].split("...") if output.startswith("..") else [output]
    return [tuple(part.rsplit(".", 1)) for part in parts]


def _wire_id(key: str):
    return json.loads(key) if key.startswith("{") else key


class PageClient:
    """One browser tab of the dashboard, as far as the server can tell."""

    def __init__(self, base: str, name: str, results: Results):
        self.base, self.name, self.results = base, name, results
        self.values: dict[tuple[str, str], object] = {}
        self.callbacks: list[dict] = []

    def _http(self, kind: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
                payload = response.read()
                status = response.status
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            self.results.add(Request(kind, time.perf_counter() - start, False, repr(e)))
            return None
        seconds = time.perf_counter() - start
        ok = status in (200, 204)
        self.results.add(Request(kind, seconds, ok, "" if ok else f"HTTP {status}"))
        return payload if ok else None

    def load(self) -> None:
        """GET the page, its layout and callback graph; fire the callbacks of a first load."""
        self._http("page", "/")
        layout = self._http("page", "/_dash-layout")
        graph = self._http("page", "/_dash-dependencies")
        if layout is None or graph is None:
            return
        _layout_values(json.loads(layout), self.values)
        self.callbacks = [c for c in json.loads(graph) if not c.get("clientside_function")]
        first = [c for c in self.callbacks if not c.get("prevent_initial_call")]
        self._fire_after_versions(first)

    def poll(self) -> None:
        """One tick of the page's timer."""
        key = (TIMER[0], TIMER[1])
        self.values[key] = (self.values.get(key) or 0) + 1
        before = self.values.get(VERSIONS)
        for callback in self._reading(TIMER):
            self._fire(callback, "timer", [f"{TIMER[0]}.{TIMER[1]}"])
        if self.values.get(VERSIONS) != before:
            self._fire_after_versions(self._reading(VERSIONS))

    def _reading(self, prop: tuple[str, str]) -> list[dict]:
        """The callbacks with `prop` among their inputs."""
        return [
            c for c in self.callbacks if any((i["id"], i["property"]) == prop for i in c["inputs"])
        ]

    def _fire_after_versions(self, callbacks: list[dict]) -> None:
        """Fire `callbacks` as the page does when the runs grew: the one that sets the
        controls first, then the others, BROWSER_CONNECTIONS at a time."""
        controls = [c for c in callbacks if ("step", "value") in _outputs(c["output"])]
        for callback in controls:
            self._fire(callback, "controls", [f"{VERSIONS[0]}.{VERSIONS[1]}"])
        rest = [c for c in callbacks if c not in controls and not _is_pattern(c)]
        with concurrent.futures.ThreadPoolExecutor(BROWSER_CONNECTIONS) as pool:
            for callback in rest:
                changed = [f"{VERSIONS[0]}.{VERSIONS[1]}"]
                pool.submit(self._fire, callback, _kind(callback), changed)

    def _fire(self, callback: dict, kind: str, changed: list[str]) -> None:
        outputs = _outputs(callback["output"])
        wire_outputs = [{"id": _wire_id(i), "property": p} for i, p in outputs]

        def entries(items):
            return [
                {
                    "id": _wire_id(item["id"]),
                    "property": item["property"],
                    "value": self.values.get((item["id"], item["property"])),
                }
                for item in items
            ]

        body = {
            "output": callback["output"],
            "outputs": wire_outputs if callback["output"].startswith("..") else wire_outputs[0],
            "inputs": entries(callback["inputs"]),
            "state": entries(callback.get("state", [])),
            "changedPropIds": changed,
        }
        payload = self._http(kind, "/_dash-update-component", body)
        if payload:
            answer = json.loads(payload)
            for key, props in answer.get("response", {}).items():
                for name, value in props.items():
                    self.values[(key, name)] = value


def _is_pattern(callback: dict) -> bool:
    """A callback on every panel at once (zoom, PNG download): the user's, not the timer's."""
    return "MATCH" in callback["output"] or "ALL" in callback["output"]


def _kind(callback: dict) -> str:
    """A short name of what a callback redraws."""
    (key, prop), *_ = _outputs(callback["output"])
    if key.startswith("{"):
        return f"panel {json.loads(key).get('panel')}"
    return {"step-label": "step label", "diagnosis": "diagnosis"}.get(key, f"{key}.{prop}")


LIVE_WRITER = r"""
import sys, time
import numpy as np
from gradscope.store import RunWriter

folder, seconds, history, per_second, n_layers, n_stats = sys.argv[1:7]
seconds, history, per_second = float(seconds), int(history), float(per_second)
n_layers, n_stats = int(n_layers), int(n_stats)
layers = [
    {"name": f"layer{i // 6}.{i % 6}.conv", "type": "Conv2d" if i % 2 else "BatchNorm2d",
     "params": 2304}
    for i in range(n_layers)
]
stats = [f"stat{k}" for k in range(n_stats - 2)] + ["grad_norm", "act_grad_norm"]
rng = np.random.default_rng(0)
writers = [
    RunWriter(f"{folder}/live/{model}.h5", layers, stats,
              attrs={"model": model, "model_class": "CifarResNet", "experiment": "live"})
    for model in ("resnet56", "plain56")
]
depth = np.geomspace(1.0, 1e-2, n_layers, dtype=np.float32)
def row(step):
    return (depth * rng.lognormal(0, 0.2, (n_stats, n_layers))).astype(np.float32)
for step in range(history):
    for w in writers:
        w.append(step, row(step))
        w.log(step, {"loss": 2.3 / (1 + step / 1000), "error": 0.9 / (1 + step / 2000)})
print("ready", flush=True)
end = time.monotonic() + seconds
step = history
while time.monotonic() < end:
    for w in writers:
        w.append(step, row(step))
        w.log(step, {"loss": 2.3 / (1 + step / 1000), "error": 0.9 / (1 + step / 2000)})
    step += 1
    time.sleep(1.0 / per_second)
for w in writers:
    w.close()
"""


def _start_live_runs(folder: Path, seconds: float) -> subprocess.Popen:
    """A child writing the two live runs for `seconds` after their history; waits for it."""
    args = [str(folder), str(seconds), str(LIVE_HISTORY), str(LIVE_RECORDS_PER_SECOND)]
    args += [str(LIVE_LAYERS), str(LIVE_STATS)]
    child = subprocess.Popen(
        [sys.executable, "-c", LIVE_WRITER, *args], stdout=subprocess.PIPE, text=True
    )
    if child.stdout.readline().strip() != "ready":
        child.kill()
        raise SystemExit("the live-run writer failed before its runs were ready")
    return child


def _start_gunicorn(folder: Path, workers: int) -> tuple[subprocess.Popen, str]:
    """gunicorn serving `folder` on a free loopback port; (process, base URL) once it answers."""
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        raise SystemExit(
            "--clients needs gunicorn (a development dependency): pip install gunicorn"
        ) from None
    command = [sys.executable, "-m", "gunicorn", "gradscope.app.server:server"]
    command += ["--workers", str(workers), "--bind", "127.0.0.1:0", "--timeout", "120"]
    server = subprocess.Popen(
        command,
        env={**os.environ, "GRADSCOPE_RUNS": str(folder)},
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    base = None
    for line in server.stderr:  # gunicorn logs to stderr: "Listening at: http://127.0.0.1:PORT"
        found = re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", line)
        if found:
            base = found.group(1)
            break
        if time.monotonic() > deadline:
            break
    if base is None:
        server.kill()
        raise SystemExit("gunicorn did not start (is gradscope installed in this Python?)")
    threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
    while time.monotonic() < deadline:  # the workers import the app: wait for an answer
        try:
            with urllib.request.urlopen(base + "/_dash-layout", timeout=REQUEST_TIMEOUT):
                return server, base
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    server.kill()
    raise SystemExit(f"gunicorn did not answer within {SERVER_START_TIMEOUT:g} s")


def _client(
    base: str, name: str, results: Results, end: float, interval: float, phase: float
) -> None:
    time.sleep(phase)  # pages are opened at different moments: their timers are out of step
    page = PageClient(base, name, results)
    try:
        page.load()
        next_tick = time.monotonic() + interval
        while next_tick < end:
            time.sleep(max(0.0, next_tick - time.monotonic()))
            page.poll()
            next_tick += interval
    except Exception as e:  # noqa: BLE001 - a client that breaks is a failure, not a lost one
        results.add(Request("client", 0.0, False, repr(e)))


def run_load(clients: int, seconds: float, interval: float, workers: int) -> int:
    """Run the load, print the figures; 0 if no request failed and p95 is under the goal."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        writer = _start_live_runs(folder, seconds + SERVER_START_TIMEOUT + 30)
        server = None
        try:
            server, base = _start_gunicorn(folder, workers)
            results = Results()
            end = time.monotonic() + seconds
            threads = [
                threading.Thread(
                    target=_client,
                    args=(base, f"client{i}", results, end, interval, interval * i / clients),
                )
                for i in range(clients)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(seconds + 10 * REQUEST_TIMEOUT)
        finally:
            for child in (server, writer):
                if child is not None:
                    child.terminate()
                    try:
                        child.wait(30)
                    except subprocess.TimeoutExpired:
                        child.kill()
    return report(results, clients, seconds, interval, workers)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(results: Results, clients: int, seconds: float, interval: float, workers: int) -> int:
    """Print latency by kind of request and overall; the exit code for the goal."""
    requests = results.requests
    failed = [r for r in requests if not r.ok]
    polled = [r for r in requests if r.kind != "page"]
    print(
        f"{clients} clients polling 2 live runs every {interval:g} s for {seconds:g} s through "
        f"gunicorn ({workers} workers): {len(requests)} requests, {len(failed)} failed"
    )
    print(f"{'request':<18} {'count':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    kinds = sorted({r.kind for r in requests}, key=lambda k: (k != "page", k != "timer", k))
    for kind in kinds:
        times = [r.seconds * 1e3 for r in requests if r.kind == kind]
        print(
            f"{kind:<18} {len(times):>6} {statistics.median(times):>8.0f} "
            f"{_percentile(times, 0.95):>8.0f} {max(times):>8.0f}"
        )
    for r in failed[:5]:
        print(f"failed: {r.kind}: {r.error}")
    if not polled:
        print("no request after the page loads: nothing measured")
        return 1
    p95 = _percentile([r.seconds for r in polled], 0.95)
    print(
        f"polling requests: p95 {p95 * 1e3:.0f} ms (goal: under {GOAL_P95_SECONDS * 1e3:.0f} ms, "
        f"no failure); load average {os.getloadavg()[0]:.1f}"
    )
    return 0 if not failed and p95 < GOAL_P95_SECONDS else 1
