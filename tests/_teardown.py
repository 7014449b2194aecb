"""The end of a multi-process test child and its check (see opsd.engine.shutdown_distributed)."""
import os


def end_worker(out_dir) -> None:
    """The last call of a multi-process test child, once its trainer/engine is out of scope: the
    orderly teardown (``opsd.engine.shutdown_distributed``), then ``teardown_rank{r}.txt`` with the
    number of gloo worker threads still busy -- :func:`assert_clean_teardown` wants 0, i.e. nothing
    left for interpreter exit to race with (the cause of the SIGABRT at exit) -- and how many are
    alive at all (idle, of groups something still references)."""
    from opsd.engine import gloo_worker_threads, shutdown_distributed

    rank = int(os.environ.get("RANK", "0"))
    busy = shutdown_distributed()
    with open(os.path.join(str(out_dir), f"teardown_rank{rank}.txt"), "w") as f:
        f.write(f"{busy} {gloo_worker_threads()}")


def assert_clean_teardown(out_dir, nproc: int) -> None:
    for r in range(nproc):
        busy, alive = open(os.path.join(str(out_dir), f"teardown_rank{r}.txt")).read().split()
        assert busy == "0", f"rank {r}: {busy} of {alive} gloo worker thread(s) busy after the teardown"
