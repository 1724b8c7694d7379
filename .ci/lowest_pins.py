"""Print pip constraints that pin every dependency in pyproject.toml (and the test extra) to its
lowest allowed version, for .ci/lowest. A dependency without a lower bound is an error: every one
must have a bound that CI tests. torch is pinned to the CPU wheel CI has (see pyproject.toml)."""

import re
import sys
import tomllib
from pathlib import Path

CI_TORCH = "2.13.0"  # the only torch CI can install; pyproject.toml says why the bound is lower

project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
requirements = project["dependencies"] + project["optional-dependencies"]["test"]
missing = []
for requirement in requirements:
    name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
    lowest = re.search(r">=\s*([0-9][^,;\s]*)", requirement)
    if name == "torch":
        print(f"torch=={CI_TORCH}")
    elif lowest is None:
        missing.append(name)
    else:
        print(f"{name}=={lowest.group(1)}")
if missing:
    sys.exit(f"pyproject.toml: no lower bound for {', '.join(missing)}")
