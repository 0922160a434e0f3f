"""The README's code runs as pasted, its results block agrees with the generated benchmarks page, and the files and
modules the docs name exist."""

import pathlib
import re


ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_is_short():
    assert len(README.splitlines()) <= 200


def test_readme_quickstart_runs_as_pasted(tmp_path, monkeypatch, capsys):
    quickstart = next(b for b in _python_blocks() if "AESAMTrainer(" in b)
    monkeypatch.chdir(tmp_path)  # its output_dir is relative, as a user's would be
    exec(compile(quickstart, "README.md", "exec"), {})  # noqa: S102
    out = capsys.readouterr().out
    fraction, passes = re.search(r"SAM on (\d+)% of the steps, (\d+) passes for 20 steps", out).groups()
    assert 0 < int(fraction) < 100 and 20 < int(passes) < 40


def test_readme_plain_pytorch_example_runs(capsys):
    loop = next(b for b in _python_blocks() if "SAMController(" in b)
    exec(compile(loop, "README.md", "exec"), {})  # noqa: S102
    out = capsys.readouterr().out
    sam_steps, steps = map(int, re.search(r"SAM steps: (\d+)/(\d+)", out).groups())
    assert steps == 20 and 0 < sam_steps < 20


def test_readme_results_agree_with_the_benchmarks_page():
    """Every row of the README's results block is in the generated `docs/benchmarks.md`: each policy's test accuracy
    and passes per step in its regime's table, each paired difference in its comparison table."""
    block = README.split("<!-- results:start -->")[1].split("<!-- results:end -->")[0]
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    rows = [line for line in block.splitlines() if line.startswith("| ") and "(" in line.split("|")[1]]
    assert len(rows) == 3
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        regime = cells[0].split(" (")[0]
        section = page.split(f"### {regime} (")[1].split("\n### ")[0]
        for policy, cell in zip(("adamw_torch", "sam", "aesam"), cells[1:4]):
            accuracy, passes = re.match(r"([\d.]+ ± [\d.]+) \[([\d.]+)\]", cell).groups()
            line = next(x for x in section.splitlines() if x.startswith(f"| {policy} |"))
            assert accuracy in line and f"| {passes}" in line, (regime, policy)
        for (a, b), cell in zip((("sam", "adamw_torch"), ("aesam", "adamw_torch"), ("aesam", "sam")), cells[4:]):
            mean, interval = re.match(r"\**([+-][\d.]+)\** (\[.*\])", cell).groups()
            line = next(x for x in section.splitlines() if x.startswith(f"| {a} − {b} |"))
            assert f"| {mean} | {interval} |" in line, (regime, a, b, line)


def test_paths_named_in_the_docs_exist():
    """Every repository file a doc tells users to run or pass (scripts, configs, modules) is there under that name."""
    docs = ["README.md", "examples/README.md", "docs/benchmarks.md", "benchmarks/findings.md", "Makefile"]
    docs += [f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")]
    for doc in docs:
        text = (ROOT / doc).read_text()
        paths = set(re.findall(r"\b((?:examples|configs|benchmarks|docs)/[\w./-]+\.(?:py|json|yaml|md|png))\b", text))
        paths |= {f"benchmarks/{name}.py" for name in re.findall(r"-m benchmarks\.(\w+)", text)}
        missing = sorted(p for p in paths if not (ROOT / p).is_file())
        assert not missing, f"{doc} names files that do not exist: {missing}"
    # The README's links to the docs, relative to the repository root.
    links = re.findall(r"\]\(((?:docs|examples)/[\w./-]+)(?:#[\w-]+)?\)", README)
    assert links and all((ROOT / link).is_file() for link in links), links
