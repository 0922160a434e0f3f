"""Faults under 2-process DDP (torchrun, gloo on CPU): a killed job resumes exactly, non-finite losses on one rank,
a rank that dies. Every job is bounded in time, so a hang fails the test."""

import math
import pathlib
import time

import pytest
import torch
from distributed.launching import REGRESSION_ARGS, Job, load_ranks, torchrun, torchrun_cmd


DISTRIBUTED = pathlib.Path(__file__).parent / "distributed"
TRAIN = DISTRIBUTED / "train_regression.py"


TRAIN_ARGS = REGRESSION_ARGS


def _assert_ranks_agree(ranks: list[dict]) -> None:
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["logs"] == ranks[1]["logs"]
    for name, p in ranks[0]["params"].items():
        assert torch.equal(p, ranks[1]["params"][name]), name


@pytest.mark.distributed
@pytest.mark.parametrize("optim", ["aesam", "aelooksam"])
def test_killed_job_resumes_with_the_same_decisions_and_weights(tmp_path, optim):
    args = TRAIN_ARGS + ["--optim", optim, "--max_steps", "12", "--save_steps", "4"]
    killed = tmp_path / "killed"
    checkpoint = killed / "checkpoint-4"
    # The uninterrupted run goes alongside: the other job spends most of its time stalled.
    full = Job(torchrun_cmd(TRAIN, args + ["--output_dir", tmp_path / "full"]))
    # The job stalls right after checkpoint-4 (a test hook: a step takes milliseconds, too fast to kill mid-run).
    job = Job(torchrun_cmd(TRAIN, args + ["--output_dir", killed, "--test_stall_after_save_step", "4"]))
    job.wait_for(lambda: all((killed / f"saved-4-rank{r}").exists() for r in (0, 1)), timeout=120)
    job.kill()  # SIGKILL to the launcher and both ranks: nothing gets to clean up or save
    assert job.proc.returncode == -9
    assert (checkpoint / "sam_state.pt").is_file() and (checkpoint / "trainer_state.json").is_file()
    assert not (killed / "checkpoint-8").exists() and not (killed / "rank0.pt").exists()  # killed mid-run

    resumed = torchrun(TRAIN, args + ["--output_dir", tmp_path / "resumed", "--resume_from_checkpoint", checkpoint])
    assert resumed.returncode == 0, resumed.output[-3000:]
    full = full.wait(timeout=120)
    assert full.returncode == 0, full.output[-3000:]

    resumed_ranks, full_ranks = load_ranks(tmp_path / "resumed"), load_ranks(tmp_path / "full")
    _assert_ranks_agree(resumed_ranks)
    _assert_ranks_agree(full_ranks)
    after = lambda rank: [log for log in rank["logs"] if log["step"] > 4]  # noqa: E731
    got, want = after(resumed_ranks[0]), after(full_ranks[0])
    assert [log["step"] for log in want] == list(range(5, 13))
    assert {log["sam/fraction"] for log in want} == {0.0, 1.0}  # both kinds of step after the resume point
    assert [(log["step"], log["sam/fraction"], log["sam/passes"]) for log in got] == [
        (log["step"], log["sam/fraction"], log["sam/passes"]) for log in want
    ]
    for a, b in zip(got, want):
        assert a["sam/grad_norm_sq"] == pytest.approx(b["sam/grad_norm_sq"], rel=1e-5), a["step"]
    for name, p in full_ranks[0]["params"].items():
        torch.testing.assert_close(resumed_ranks[0]["params"][name], p, atol=1e-6, rtol=1e-6, msg=name)
    c_res, c_full = resumed_ranks[0]["controller"], full_ranks[0]["controller"]
    assert (c_res["t"], c_res["sam_steps"], c_res["passes"]) == (c_full["t"], c_full["sam_steps"], c_full["passes"])


@pytest.mark.distributed
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_fp16_non_finite_loss_on_one_rank_is_an_overflow_step_on_every_rank(tmp_path, value):
    """Rank 1 alone plants inf/NaN in the loss of step 3; DDP's all-reduce spreads it, and both ranks skip the step."""
    flags = f"--optim aelooksam --fp16 --max_steps 6 --save_strategy no --test_loss_factor_step 3 --test_loss_factor {value}"
    args = TRAIN_ARGS + ["--output_dir", tmp_path] + flags.split() + ["--test_loss_factor_rank", "1"]
    job = torchrun(TRAIN, args, timeout=120)
    assert job.returncode == 0, job.output[-3000:]
    ranks = load_ranks(tmp_path)
    _assert_ranks_agree(ranks)
    for rank in ranks:
        before, at = rank["snapshots"][2], rank["snapshots"][3]  # after steps 2 and 3 (0-based)
        assert (before["overflow_steps"], at["overflow_steps"]) == (0, 1), rank["rank"]
        assert at["policy"] == before["policy"]  # mu, var untouched
        assert before["g_v_norm"] is not None and torch.equal(at["g_v_norm"], before["g_v_norm"])  # g_v untouched
        assert at["scale"] == before["scale"] / 2  # the GradScaler saw the overflow on this rank too
        for name, p in at["params"].items():
            assert torch.equal(p, before["params"][name]), f"rank {rank['rank']}: the skipped step moved {name}"
        assert rank["controller"]["overflow_steps"] == 1 and rank["controller"]["decided_steps"] == 5
        step4 = rank["logs"][3]
        assert step4["sam/overflow_steps"] == 1.0 and step4["sam/fraction"] is None
        assert all(math.isfinite(v) for p in rank["params"].values() for v in p.flatten().tolist())


@pytest.mark.distributed
@pytest.mark.parametrize("precision", [[], ["--bf16"]], ids=["fp32", "bf16"])
def test_nan_loss_without_a_loss_scaler_stops_every_rank_with_a_clear_error(tmp_path, precision):
    """No scaler would skip the step: the adaptive policy raises on both ranks at once (x is rank 0's value)."""
    flags = "--optim aesam --max_steps 6 --save_strategy no --test_loss_factor_step 3"
    args = TRAIN_ARGS + precision + ["--output_dir", tmp_path] + flags.split()
    started = time.monotonic()
    job = torchrun(TRAIN, args, timeout=120)
    assert job.returncode != 0
    # The loss of the step run at global_step 3 is NaN: the Trainer's global_step after it, 4, names it (as a
    # checkpoint of that step would be named).
    assert job.output.count("FloatingPointError: The gradient of optimizer step 4 is not finite") == 2, job.output[
        -3000:
    ]
    assert time.monotonic() - started < 60  # no rank waited for the ddp_timeout
    assert not (tmp_path / "rank0.pt").exists()


@pytest.mark.distributed
def test_nan_loss_with_a_policy_that_never_reads_the_norm_stops_at_the_second_pass_on_every_rank(tmp_path):
    """`sam` decides without x, but the SAM gradient is checked once per SAM step: both ranks stop, weights finite, and
    the message says the first pass was already non-finite."""
    args = TRAIN_ARGS + ["--output_dir", tmp_path] + "--optim sam --max_steps 6 --save_strategy no".split()
    job = torchrun(TRAIN, args + ["--test_loss_factor_step", "3"], timeout=120)
    assert job.returncode != 0
    message = "FloatingPointError: The gradient of optimizer step 4 is not finite already in the first pass"
    assert job.output.count(message) == 2, job.output[-3000:]


@pytest.mark.distributed
@pytest.mark.parametrize("how", ["exit", "raise"])
def test_a_rank_that_dies_ends_the_job_with_a_clear_message(tmp_path, how):
    flags = f"--optim aesam --max_steps 8 --save_strategy no --test_die_step 3 --test_die_rank 1 --test_die_how {how}"
    args = TRAIN_ARGS + ["--output_dir", tmp_path] + flags.split()
    started = time.monotonic()
    job = torchrun(TRAIN, args, timeout=120)  # raises TimeoutError if rank 0 is left hanging in a collective
    elapsed = time.monotonic() - started
    assert job.returncode != 0
    # torchrun's report names the failed rank and its exit code (3 for the hard exit, 1 for the exception).
    assert "rank      : 1 (local_rank: 1)" in job.output, job.output[-3000:]
    if how == "exit":
        assert "exitcode  : 3" in job.output
    else:
        assert "RuntimeError: test hook: rank 1 fails at step 3" in job.output
        # After the traceback, torch 2.13 + gloo sometimes aborts in interpreter teardown (the SIGABRT noted in
        # run_ddp_training.py), so the report gives signal 6 instead of exit code 1; either way the job ends.
        assert "exitcode  : 1" in job.output or "Signal 6 (SIGABRT)" in job.output, job.output[-3000:]
    assert elapsed < 60, elapsed
    assert not (tmp_path / "rank0.pt").exists()
