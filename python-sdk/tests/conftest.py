import importlib.util
import os
import shutil

import pytest

from weir_plugin import native

SDK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def native_sdk(tmp_path_factory):
    """A copy of the SDK with the C speedups built into it, as the plugin host builds them
    into a venv (this machine has a C compiler: a failed build fails the tests), with every
    warning an error (and `WEIR_NATIVE_CFLAGS`, e.g. scripts/asan-native's sanitizer)."""
    root = tmp_path_factory.mktemp("native-sdk")
    pkg = root / "weir_plugin"
    shutil.copytree(
        os.path.join(SDK, "weir_plugin"),
        pkg,
        ignore=shutil.ignore_patterns("_native*.so", "_native.stamp", "__pycache__"),
    )
    ok, message = native.build(str(pkg), extra_cflags=native.STRICT_CFLAGS)
    assert ok, message
    return root


@pytest.fixture(scope="session")
def c_module(native_sdk):
    """The built `_native` module, loaded from the copy."""
    pkg = native_sdk / "weir_plugin"
    so = next(p for p in pkg.iterdir() if p.name.startswith("_native.") and p.suffix == ".so")
    spec = importlib.util.spec_from_file_location("weir_plugin._native", so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
