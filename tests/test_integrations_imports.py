"""The integrations stay optional: gradscope imports no framework, a missing one is named."""

import importlib
import subprocess
import sys

import pytest

FRAMEWORKS = {  # integration module -> the packages it needs, and the pip extra
    "gradscope.integrations.lightning": (("lightning",), "lightning"),
    "gradscope.integrations.pytorch_lightning": (("pytorch_lightning",), "lightning"),
    "gradscope.integrations.transformers": (("transformers",), "transformers"),
}


def test_import_gradscope_imports_no_framework():
    code = (
        "import sys, gradscope, gradscope.integrations\n"
        "loaded = [m for m in ('lightning', 'pytorch_lightning', 'transformers', 'accelerate')"
        " if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("module", sorted(FRAMEWORKS))
def test_a_missing_framework_is_an_import_error_with_the_pip_command(module, monkeypatch):
    packages, extra = FRAMEWORKS[module]
    for name in list(sys.modules):
        if name == module or any(name == p or name.startswith(p + ".") for p in packages):
            monkeypatch.delitem(sys.modules, name)
    for package in packages:
        monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    with pytest.raises(ImportError, match=rf"pip install 'torch-gradscope\[{extra}\]'") as e:
        importlib.import_module(module)
    assert e.value.name == packages[0] and packages[0] in str(e.value)
