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
    """Every number of the README's results block is in the generated `docs/benchmarks.md`: each policy's
    selected-checkpoint accuracy and passes per step in its regime's table, each paired difference in its comparison
    table, each regime's cheapest policy in its decision line."""
    block = README.split("<!-- results:start -->")[1].split("<!-- results:end -->")[0]
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    tables = [t for t in block.split("\n\n") if t.startswith("| regime |")]
    assert len(tables) == 2, "a decision table and an accuracy table"
    decisions, accuracies = ([line for line in t.splitlines()[2:]] for t in tables)
    assert decisions and len(decisions) == len(accuracies)
    pairs = [("sam", "adamw"), None, ("aesam", "sam"), ("aesam", "late-matched"), ("aesam", "scheduled-matched")]
    for row in decisions:
        cells = [c.strip() for c in row.strip("|").split("|")]
        regime = cells[0].split(" (")[0]
        section = page.split(f"### {regime} (")[1].split("\n### ")[0]
        line = next(x for x in section.splitlines() if x.startswith("- Cheapest policy"))
        # The policy the README names is the one the page puts in bold, with the same flags.
        named = re.match(r"(.+?) \(`([^`]+)`", cells[2])
        if named is None:  # undetermined, or SAM itself
            assert cells[2].split(" (")[0].split(":")[0] in line, (regime, cells[2], line)
        else:
            assert f"**{named.group(1)}** (`{named.group(2)}`" in line, (regime, cells[2], line)
        for pair, cell in zip(pairs, cells[1:], strict=True):
            if pair is None or cell == "–":
                continue
            comparison = next(x for x in section.splitlines() if x.startswith(f"| {pair[0]} − {pair[1]} |"))
            assert f"| {cell} |" in comparison, (regime, pair, comparison)
    header = [c.strip() for c in tables[1].splitlines()[0].strip("|").split("|")][1:]
    for row in accuracies:
        cells = [c.strip() for c in row.strip("|").split("|")]
        section = page.split(f"### {cells[0]} (")[1].split("\n### ")[0]
        for name, cell in zip(header, cells[1:], strict=True):
            if cell == "–":
                continue
            accuracy, passes = re.match(r"([\d.]+ ± [\d.]+) \[([\d.]+)\]", cell).groups()
            label = name.split(" [")[0]
            line = next(x for x in section.splitlines() if x.startswith(f"| {label} (`"))
            cost = line.strip().strip("|").split("|")[-1].strip()  # passes per step, mean (± std where it varies)
            assert line.split("|")[2].strip() == accuracy and cost.split(" ±")[0] == passes, (cells[0], label, line)


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
