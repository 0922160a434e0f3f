"""A bare 2-rank gloo job, for the teardown abort of torch 2.13 (`aesam_hf.teardown`, docs/reliability.md).

    torchrun --nproc_per_node 2 tests/distributed/bare_gloo.py OUT_DIR {none,atexit,exit}

Joins a gloo group, runs 20 all-reduces, registers an exit handler that writes `OUT_DIR/handler<rank>` (to show which
exit handlers ran), then ends as `mode` says: `none` returns (the group left to interpreter finalization), `atexit`
registers `destroy_gloo_group_at_exit` and returns, `exit` calls `exit_gloo_process()`.
"""

import atexit
import pathlib
import sys

import torch
import torch.distributed as dist

from aesam_hf.teardown import destroy_gloo_group_at_exit, exit_gloo_process


def main(out_dir: str, mode: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    x = torch.ones(1000)
    for _ in range(20):
        dist.all_reduce(x)
    marker = pathlib.Path(out_dir) / f"handler{rank}"
    atexit.register(marker.write_text, "ran")
    if mode == "atexit":
        destroy_gloo_group_at_exit()
    elif mode == "exit":
        exit_gloo_process()
        raise AssertionError("exit_gloo_process returned in a gloo group")


if __name__ == "__main__":
    main(*sys.argv[1:3])
