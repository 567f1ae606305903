"""The README stays true: CI runs exactly its test command, and its toy table lists every toy dataset."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", section, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_quick_start_has_exactly_two_commands():
    commands = _quick_start_commands()
    assert len(commands) == 2, commands
    assert "dplbench run protocol=base2novel" in commands[0]
    assert "pytest" in commands[1] and "[dev]" in commands[1]


def test_ci_runs_the_readme_test_command():
    test_command = _quick_start_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_command in ci.splitlines()


def test_toy_table_lists_every_toy_dataset_with_its_split_sizes():
    from dplbench.toy.datasets import SPECS, split_counts

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (toy_\w+)[^|]*\| \d+ \| ([\d /]+) \|", text, flags=re.M)}
    assert set(rows) == set(SPECS)
    for name, spec in SPECS.items():
        sizes = " / ".join(str(sum(split_counts(spec, split))) for split in ("train", "val", "test"))
        assert rows[name].strip() == sizes, name
