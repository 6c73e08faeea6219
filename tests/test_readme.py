"""The README's Python examples run as written, and its set-up matches CI."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index):
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {})


def test_ci_runs_the_readme_test_command():
    setup = re.search(r"## Set-up.*?```bash\n(.*?)```", README, flags=re.DOTALL)
    assert setup is not None
    commands = setup.group(1).strip().splitlines()
    assert len(commands) == 2
    ci_script = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci_script.splitlines()


def test_readme_state_machine_is_the_transition_table():
    from esper.leyline import VALID_TRANSITIONS, SeedStage

    block = re.search(r"transition table\n\(`esper\.leyline\.VALID_TRANSITIONS`\) says:\n\n"
                      r"```\n(.*?)```", README, flags=re.DOTALL)
    assert block is not None
    drawn = set()
    for line in block.group(1).strip().splitlines():
        groups = [[SeedStage[name.strip()] for name in part.split(",")]
                  for part in re.split(r"\s+-(?:G\d-)?>\s+", line)]
        drawn |= {(a, b) for left, right in itertools.pairwise(groups)
                  for a in left for b in right}
    table = {(a, b) for a, targets in VALID_TRANSITIONS.items() for b in targets
             if a is not SeedStage.UNKNOWN}
    assert drawn == table
    assert (SeedStage.HOLDING, SeedStage.BLENDING) not in drawn
