"""README's "Benchmark your own model", run as a new user would: its file written from the code block, its
commands run one by one (each `seqbench run` on the tiny preset, two steps, on generated data), so the
tutorial cannot rot."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
TINY = ["--preset", "tiny", "--set", "limit_batches=2", "--set", "latency_time=0.01", "--threads", "1"]


def tutorial() -> tuple[str, str, list[str]]:
    """The section's file name and code (its first python block, whose first line is ``# NAME.py``) and its
    commands (the lines of its first bash block, comments dropped)."""
    text = README.read_text()
    section = text.split("## Benchmark your own model", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    name = re.match(r"# (\S+\.py)", code).group(1)
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [line.split(" #")[0].strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]
    return name, code, commands


def test_readme_tutorial_runs_as_written(env, tmp_path):
    name, code, commands = tutorial()
    assert len(code.splitlines()) <= 45 and any(c.startswith("seqbench run --import") for c in commands)
    (tmp_path / name).write_text(code)
    e = {**os.environ, "OMP_NUM_THREADS": "1"}
    e.pop("SEQBENCH_PLUGINS", None)
    outputs = []
    for command in commands:
        argv = shlex.split(command)
        if argv[0] == "seqbench":
            argv = [sys.executable, "-m", "seqbench", *argv[1:]] + (TINY if argv[1] == "run" else [])
        elif argv[0] == "python":
            argv[0] = sys.executable
        p = subprocess.run(argv, cwd=tmp_path, env=e, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"{command}\n{p.stdout}\n{p.stderr}"
        assert "Traceback" not in p.stderr and "warning: plugin" not in p.stderr, p.stderr
        outputs.append(p.stdout)
    records = list((env["results"] / "runs").glob("*.json"))
    models = sorted(p.name.split("-pmnist-")[0] for p in records)
    assert models == ["hippo", "lstm", "my-mgu"]
    report = (env["results"] / "report.md").read_text()
    assert "my-mgu" in report and "hippo" in report
    assert any(line.startswith("ok     my-mgu x pmnist") for out in outputs for line in out.splitlines())
