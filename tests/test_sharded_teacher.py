"""The ZeRO-3 sharded teacher (engine.teacher_sharding=zero3, opsd/teacher.py): on 2 gloo ranks its
token statistics equal the full teacher's on the same batch, each rank holds half of the teacher's
parameter bytes (read from the partitions), and a training run equals the unsharded one."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from opsd.config import ConfigError, load_config
from _teardown import assert_clean_teardown

HERE = Path(__file__).parent
FP32_TOL = 1e-5


def _torchrun(script, args, nproc=2, out=None):
    from test_distributed import _env

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}",
           str(HERE / script), *args]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    if out is not None:
        assert_clean_teardown(out, nproc)


@pytest.mark.slow
def test_sharded_teacher_equals_full_teacher_with_half_the_bytes_per_rank(tiny_world, tmp_path):
    _torchrun("_sharded_teacher_worker.py", [tiny_world["teacher"], str(tmp_path)], out=tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for res in ranks:
        print(json.dumps(res))
        assert res["world"] == 2 and res["tokens"] > 0
        for layout in ("padded", "packed", "packed_vs_padded"):  # max |difference| per statistic
            assert max(res[layout].values()) <= FP32_TOL, (layout, res[layout])
        assert res["head_equal"]
        share = res["local_bytes"] / res["full_bytes"]
        assert 0.45 <= share <= 0.55, share  # partitions are padded to a multiple of the world size
        assert res["unsharded_local_bytes"] == res["full_bytes"]
        assert res["gathered_after"] == 0  # nothing stays gathered after a forward
    assert ranks[0]["local_bytes"] + ranks[1]["local_bytes"] >= ranks[0]["full_bytes"]


@pytest.mark.slow
def test_training_with_the_sharded_teacher_equals_the_full_teacher(tiny_world, tmp_path):
    from test_packing import run_dist_worker

    paths = [tiny_world["student"], tiny_world["teacher"], tiny_world["train"]]
    (tmp_path / "full").mkdir(), (tmp_path / "sharded").mkdir()
    l1, w1 = run_dist_worker(paths, 1, tmp_path / "full")
    l2, w2 = run_dist_worker(paths, 2, tmp_path / "sharded", ["engine.teacher_sharding=zero3"])
    print("losses full teacher ws=1", l1, "sharded teacher ws=2", l2)
    for a, b in zip(l1, l2):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4)


def test_unknown_sharding_is_named():
    with pytest.raises(ConfigError, match=r"engine.teacher_sharding='fsdp' is not one of \['none', 'zero3'\]"):
        load_config(None, ["model.student=s", "model.teacher=t", "data.train_files=x.jsonl",
                           "engine.teacher_sharding=fsdp"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sharded_offloaded_teacher_on_gpu_keeps_partitions_in_host_memory(tiny_world):
    """teacher_placement=offload with sharding: the partitions stay in (pinned) host memory and are
    fetched module by module for the forward; the statistics are the full teacher's."""
    from opsd.engine import init_distributed
    from opsd.models import load_causal_lm
    from opsd.teacher import Teacher, sharded_loading, zero3_config

    device = torch.device("cuda", 0)
    init_distributed(device)
    full = Teacher(load_causal_lm(tiny_world["teacher"]), device)
    ds = zero3_config(device, offload=True)
    with sharded_loading(ds):
        model = load_causal_lm(tiny_world["teacher"])
    sharded = Teacher(model, device, placement="offload", sharding="zero3", ds_config=ds)
    assert all(p.ds_tensor.device.type == "cpu" for p in sharded.model.parameters())
    ids = torch.randint(5, 60, (2, 11))
    att, mask = torch.ones_like(ids), torch.zeros_like(ids)
    mask[:, 3:10] = 1
    a = full.score(ids, att, mask, full.width).hidden
    b = sharded.score(ids, att, mask, full.width).hidden
    torch.testing.assert_close(a, b, atol=FP32_TOL, rtol=1e-4)
