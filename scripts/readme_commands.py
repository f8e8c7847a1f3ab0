"""Prints a command of the README's Quickstart block: `train` (the first) or `test` (the second).

`.ci/run` runs the `test` command, so CI runs exactly what the README tells a newcomer to run.
"""

import re
import sys
from pathlib import Path


def quickstart_commands(readme: str) -> list[str]:
    """Non-comment lines of the first fenced block under '## Quickstart'."""
    match = re.search(r"^## Quickstart.*?```[a-z]*\n(.*?)```", readme, re.S | re.M)
    if not match:
        raise SystemExit("README.md has no '## Quickstart' section with a fenced block.")
    lines = [line.strip() for line in match.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


if __name__ == "__main__":
    which = {"train": 0, "test": 1}[sys.argv[1]]
    print(quickstart_commands((Path(__file__).parent.parent / "README.md").read_text())[which])
