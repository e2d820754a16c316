"""The package's own modules type-check (py.typed promises it): mypy over
attune/__init__.py, attune/sync.py and attune/flower, with the generated
module read for its types only."""

import pathlib
import subprocess
import sys

import attune


def test_the_package_type_checks():
    package = pathlib.Path(attune.__file__).parent
    modules = [package / "__init__.py", package / "sync.py", package / "flower"]
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
         "--check-untyped-defs", "--no-incremental", *map(str, modules)],
        cwd=package.parent, capture_output=True, text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Success" in checked.stdout
