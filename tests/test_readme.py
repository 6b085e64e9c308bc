"""The README's two commands are exactly what CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    return [line.strip() for line in lines if line.startswith("    ") and line.strip().startswith(("python3 -m venv", ".venv/bin/python -m pytest"))]


def test_ci_runs_the_readme_commands():
    cmds = readme_commands()
    assert len(cmds) == 2, cmds
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for cmd in cmds:
        assert cmd in ci, f"{cmd!r} is not in .ci/run"


def test_readme_checkpoint_exists():
    cmd = readme_commands()[0]
    ckpt = next(tok for tok in cmd.split() if tok.endswith(".pt"))
    assert (ROOT / ckpt).is_file()
