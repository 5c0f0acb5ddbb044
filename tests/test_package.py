"""The package as users meet it: public names, attach's signature, light imports, the layout."""

import inspect
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import gradscope
from gradscope.recorder import Recorder

ROOT = Path(__file__).resolve().parents[1]


def test_public_names():
    for name in ("attach", "open_run", "diagnose", "GradscopeError", "RunFileError", "UsageError"):
        assert name in gradscope.__all__ and hasattr(gradscope, name)
    assert issubclass(gradscope.RunFileError, gradscope.GradscopeError)
    assert issubclass(gradscope.UsageError, gradscope.GradscopeError)
    from gradscope.models import create_model, list_models

    assert "resnet56" in list_models() and callable(create_model)


def test_attach_spells_out_the_recorders_parameters():
    # help(gradscope.attach) and an IDE show every parameter: the signature is written out,
    # and must stay the recorder's (names, order, kinds, defaults).
    attach = inspect.signature(gradscope.attach).parameters
    recorder = inspect.signature(Recorder.__init__).parameters
    wanted = [(p.name, p.kind, p.default) for p in list(recorder.values())[1:]]  # less self
    assert [(p.name, p.kind, p.default) for p in attach.values()] == wanted
    keyword_only = [name for name, p in attach.items() if p.kind is p.KEYWORD_ONLY]
    assert keyword_only == list(attach)[2:]  # all but model and path
    for name in list(attach)[2:]:
        assert f"{name}:" in gradscope.attach.__doc__, name


def test_import_gradscope_and_inspect_do_not_import_torch(tmp_path):
    from gradscope.store import RunWriter

    path = tmp_path / "run.h5"
    layers = [{"name": "fc", "type": "Linear", "params": 10}]
    with RunWriter(path, layers, ["grad_norm"]) as writer:
        writer.append(0, [[1.0]])
    code = (
        "import sys, gradscope\n"
        "from gradscope.cli import main\n"
        f"code = main(['inspect', {str(path)!r}])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "diagnosis of" in done.stdout


def test_python_m_gradscope_is_the_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "gradscope", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "record" in done.stdout and "dashboard" in done.stdout


def test_one_subpackage_per_stage_and_few_plain_modules():
    package = ROOT / "gradscope"
    stages = {"recorder", "store", "figures", "data", "train", "models", "cli"}
    assert stages <= {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    plain = sorted(p.name for p in package.glob("*.py"))
    assert len(plain) <= 8, plain


def test_the_installed_packages_are_every_package_in_the_tree():
    # pyproject lists the packages (the dashboard's folder installs as gradscope.app), so a new
    # subpackage must be added there, or a wheel would leave it out.
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"gradscope.app": "app"}
    found = {"gradscope.app"} | {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "gradscope").rglob("__init__.py")
    }
    assert set(config["packages"]) == found


def test_no_module_named_app_outside_the_repository(tmp_path):
    code = (
        "import importlib.util, gradscope.app\n"
        "assert importlib.util.find_spec('app') is None, 'a top-level app module is installed'\n"
        "print(gradscope.app.create_app.__module__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "gradscope.app"


def test_gradscope_dashboard_serves_the_page_from_outside_the_repository(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "gradscope", "dashboard", "--runs", str(tmp_path), "--port",
         str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                    assert page.status == 200 and "gradscope" in page.read().decode()
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "the dashboard did not answer"
                time.sleep(0.3)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_ci_runs_the_readmes_test_command_and_lists_the_slowest_tests():
    command = "python3 -m pytest -q --durations=15"
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"bash scripts/setup.sh || exit 1\n{command}" in ci
    readme = (ROOT / "README.md").read_text()
    comment, line = re.search(r"\n(# the tests .*)\n(.*)\n", readme).groups()
    assert line == f"bash scripts/setup.sh && {command}"
    assert re.search(r"about \d+(\.\d+)? minutes on a 2-core machine", comment)
