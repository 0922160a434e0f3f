"""`aesam_hf.teardown`: a gloo job ends with exit status 0 and runs its exit handlers (torch 2.13's teardown abort).

The abort is intermittent (docs/reliability.md, "Clean exit", counts it over many launches with
`tests/distributed/count_clean_exits.py`); these tests pin the mechanism: the process ends with the status given, after the
exit handlers ran, and only in a gloo group.
"""

import pytest
from distributed.launching import REPO, torchrun

from aesam_hf.teardown import exit_gloo_process, in_gloo_group


BARE = REPO / "tests" / "distributed" / "bare_gloo.py"


def test_outside_a_process_group_exit_gloo_process_returns():
    assert not in_gloo_group()
    exit_gloo_process()  # a no-op: pytest goes on


@pytest.mark.distributed
def test_a_gloo_job_ends_with_status_0_after_its_exit_handlers_ran(tmp_path):
    job = torchrun(BARE, [tmp_path, "exit"], timeout=120, env={"PYTHONPATH": str(REPO)})
    assert job.returncode == 0, job.output[-3000:]
    assert "exit_gloo_process returned" not in job.output
    assert [(tmp_path / f"handler{r}").read_text() for r in (0, 1)] == ["ran", "ran"]
