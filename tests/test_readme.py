"""The README's plain-PyTorch example runs as written, and the files and modules the docs name exist."""

import pathlib
import re


ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_readme_plain_pytorch_example_runs(capsys):
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    loop = next(b for b in blocks if "SAMController(" in b)
    exec(compile(loop, "README.md", "exec"), {})  # noqa: S102
    out = capsys.readouterr().out
    sam_steps, steps = map(int, re.search(r"SAM steps: (\d+)/(\d+)", out).groups())
    assert steps == 20 and 0 < sam_steps < 20


def test_paths_named_in_the_docs_exist():
    """Every repository file a doc tells users to run or pass (scripts, configs, modules) is there under that name."""
    for doc in ("README.md", "examples/README.md", "docs/benchmarks.md", "benchmarks/findings.md", "Makefile"):
        text = (ROOT / doc).read_text()
        paths = set(re.findall(r"\b((?:examples|configs|benchmarks)/[\w./-]+\.(?:py|json|yaml))\b", text))
        paths |= {f"benchmarks/{name}.py" for name in re.findall(r"-m benchmarks\.(\w+)", text)}
        assert paths, doc
        missing = sorted(p for p in paths if not (ROOT / p).is_file())
        assert not missing, f"{doc} names files that do not exist: {missing}"
