"""The build step pyproject.toml cannot declare: compiling the runtime's native library
(src/shrinkformer/runtime/build.py) when the package is installed, so that running a model never
needs a compiler. A machine without one gets a warning here and the runtime's numpy path."""

import importlib.util
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("_runtime_build", HERE / "src/shrinkformer/runtime/build.py")
runtime_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runtime_build)


class BuildWithRuntime(build_py):
    def run(self) -> None:
        super().run()
        # editable installs run from the source tree: the library goes beside the sources there
        root = HERE / "src" if getattr(self, "editable_mode", False) else Path(self.build_lib)
        target_dir = root / "shrinkformer" / "runtime" / "_lib"
        for variant in runtime_build.machine_variants():
            target = target_dir / runtime_build.library_name(variant)
            try:
                runtime_build.build(variant, target)
                print(f"shrinkformer: built the native runtime ({variant}): {target}")
            except OSError as err:
                print(f"WARNING: shrinkformer: could not build the native runtime ({variant}): {err}; "
                      f"translation falls back to numpy (slower)", file=sys.stderr)


setup(cmdclass={"build_py": BuildWithRuntime})
