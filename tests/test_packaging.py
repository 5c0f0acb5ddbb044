"""The distributions as users get them: `python -m build`, then the wheel in a fresh venv."""

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import gradscope

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "torch-gradscope"  # "gradscope" on PyPI is another project
ASSET = "app/assets/gradscope-test.css"  # added to the copy built here: a future dashboard asset
IMAGE = "docs/images/gradscope-test.png"  # and a future README image
NOT_SOURCE = (".git", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", "*.h5")


def copy_of_the_tree(dest: Path) -> Path:
    """The repository's files (less caches, build output and run files) under `dest`."""

    def ignore(folder, names):
        ignored = set(shutil.ignore_patterns(*NOT_SOURCE)(folder, names))
        if Path(folder) == ROOT / "runs":
            ignored |= {n for n in names if n != "README.md"}
        return ignored

    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """The sdist and the wheel `python -m build` makes (the wheel from the sdist)."""
    work = tmp_path_factory.mktemp("build")
    src = copy_of_the_tree(work / "src")  # building writes egg-info into the tree it builds
    for name, data in ((ASSET, b"body { margin: 0 }\n"), (IMAGE, b"\x89PNG\r\n\x1a\n")):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    out = work / "dist"
    # no isolation: the build backend is already installed, and an isolated build downloads it
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


def test_the_distribution_name_is_ours_and_the_version_is_the_packages(dists):
    sdist, wheel = dists
    version = gradscope.__version__
    assert wheel.name == f"torch_gradscope-{version}-py3-none-any.whl"
    assert sdist.name == f"torch_gradscope-{version}.tar.gz"
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(f"torch_gradscope-{version}.dist-info/METADATA").decode()
        entry_points = z.read(f"torch_gradscope-{version}.dist-info/entry_points.txt").decode()
    assert f"Name: {DISTRIBUTION}\n" in meta and f"Version: {version}\n" in meta
    assert "License: BSD-3-Clause\n" in meta
    assert "Classifier: License :: OSI Approved :: BSD License\n" in meta
    for extra in ("lightning", "transformers", "dev"):
        assert f"Provides-Extra: {extra}\n" in meta
    assert "gradscope = gradscope.cli:main" in entry_points


def test_the_wheel_holds_the_package_and_the_dashboards_assets(dists):
    _, wheel = dists
    names = zipfile.ZipFile(wheel).namelist()
    for wanted in (
        "gradscope/app/__init__.py",
        "gradscope/app/server.py",
        "gradscope/" + ASSET,
        "gradscope/integrations/lightning.py",
        "gradscope/integrations/transformers.py",
        "gradscope/recorder/_recorder.py",
    ):
        assert wanted in names, wanted
    assert not [n for n in names if n.startswith(("app/", "tests/", "docs/", "examples/"))]
    license_text = (ROOT / "LICENSE").read_bytes()
    assert license_text.startswith(b"BSD 3-Clause License")
    assert b"the gradscope developers" in license_text
    (shipped,) = [n for n in names if re.fullmatch(r"[^/]+\.dist-info/(licenses/)?LICENSE", n)]
    assert zipfile.ZipFile(wheel).read(shipped) == license_text
    assert not [n for n in names if "__pycache__" in n or n.endswith(".h5")]


def test_the_sdist_holds_the_source_and_the_readmes_images(dists):
    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        top = sdist.name.removesuffix(".tar.gz")
        names = {n.removeprefix(top + "/") for n in tar.getnames()}
    for wanted in (
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "MANIFEST.in",
        ASSET,
        IMAGE,
        "docs/architecture.md",
        "examples/03_lightning.py",
        "tests/test_packaging.py",
        "scripts/setup.sh",
    ):
        assert wanted in names, wanted
    assert not [n for n in names if "__pycache__" in n or n.endswith(".h5")]
    # every image the README shows is in the sdist, at the relative path the README names
    readme = (ROOT / "README.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)", readme) + re.findall(
        r"<img [^>]*src=\"([^\"]+)\"", readme
    )
    for image in images:
        if "://" not in image:
            assert image.removeprefix("./") in names, image


def test_the_wheel_installs_and_runs_in_a_fresh_venv(dists, tmp_path):
    _, wheel = dists
    venv = tmp_path / "venv"
    # system site packages: torch and the rest are there, so installing takes seconds
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        timeout=120,
    )
    python = venv / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
    done = subprocess.run(
        [*install, "--no-index", str(wheel)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    outside = tmp_path / "elsewhere"  # not the repository: nothing imports from the tree
    outside.mkdir()
    done = subprocess.run(
        [str(venv / "bin" / "gradscope"), "--help"],
        cwd=outside,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "record" in done.stdout and "dashboard" in done.stdout
    code = (
        "import importlib.metadata, gradscope, gradscope.app, gradscope.integrations\n"
        "print(gradscope.__file__)\n"
        "print(gradscope.app.__file__)\n"
        f"print(importlib.metadata.version({DISTRIBUTION!r}))\n"
    )
    done = subprocess.run(
        [str(python), "-c", code], cwd=outside, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    package, app, version = done.stdout.split()
    site = venv / "lib"
    assert Path(package).is_relative_to(site) and Path(app).is_relative_to(site)
    assert Path(app).parent.parent == Path(package).parent  # gradscope/app, not a top-level app
    assert version == gradscope.__version__
