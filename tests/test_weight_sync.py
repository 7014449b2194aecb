"""``opsd.weight_sync.iter_hf_weights``: HF names, tied embeddings, ZeRO-3 gathering at world
size 1 and 2 (DeepSpeed on CPU with gloo, one subprocess per rank), and ``checkpoint.export_hf``
from ZeRO-3 shards (the same weights, no buffers)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from _teardown import assert_clean_teardown

REPO = Path(__file__).resolve().parents[1]


def _tiny_qwen3(tie: bool, seed: int = 0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
                      initializer_range=0.2, tie_word_embeddings=tie)
    return Qwen3ForCausalLM(cfg)


class _Holder(nn.Module):
    """Stands in for opsd.distill.DistillModule: the HF model under ``.model``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, labels=input_ids).loss


def test_plain_names_and_values_match_state_dict():
    from opsd.weight_sync import iter_hf_weights

    model = _tiny_qwen3(tie=False)
    got = dict(iter_hf_weights(_Holder(model), copy=True))
    ref = model.state_dict()
    assert list(got) == list(ref)  # same HF names, same (module) order, no "model."/"module." prefix
    for k in ref:
        assert torch.equal(got[k], ref[k]), k


def test_tied_embeddings_yield_lm_head():
    from opsd.weight_sync import iter_hf_weights

    model = _tiny_qwen3(tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert "lm_head.weight" not in dict(model.named_parameters())  # HF dedups the tied one
    got = dict(iter_hf_weights(model, copy=True))
    assert "lm_head.weight" in got
    assert torch.equal(got["lm_head.weight"], model.model.embed_tokens.weight.detach())
    assert set(got) == set(model.state_dict())
    only_first = dict(iter_hf_weights(model, include_tied=False))
    assert "lm_head.weight" not in only_first


def test_buffers_as_in_state_dict():
    """Persistent buffers are weights (state_dict has them); non-persistent ones, like rotary
    inv_freq, are not, and a walk over modules must not pick them up."""
    from opsd.weight_sync import iter_hf_weights

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 3)
            self.register_buffer("scale", torch.full((3,), 2.0))
            self.register_buffer("cache", torch.zeros(3), persistent=False)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = Scaled(), nn.Linear(3, 1)

    net = Net()
    assert [n for n, _ in iter_hf_weights(net)] == list(net.state_dict()) == \
        ["a.scale", "a.lin.weight", "a.lin.bias", "b.weight", "b.bias"]
    model = _tiny_qwen3(tie=False)
    assert any("inv_freq" in n for n, _ in model.named_buffers())  # the model has such buffers
    assert [n for n, _ in iter_hf_weights(model)] == list(model.state_dict())


def test_prefix_stripping_without_hf_model():
    from opsd.weight_sync import iter_hf_weights

    class Wrapper(nn.Module):  # e.g. DDP / torch.compile around a non-HF module
        def __init__(self):
            super().__init__()
            self.module = nn.Linear(2, 3)

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = Wrapper()

    names = [n for n, _ in iter_hf_weights(Outer())]
    assert names == ["weight", "bias"]


# ---------------------------------------------------------------- ZeRO-3, world size 1 and 2

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world", [1, 2])
def test_zero3_gathered_equals_full_state(world, tmp_path):
    pytest.importorskip("deepspeed")
    port = str(_free_port())
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": str(world),
           "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR",
                                                  str(Path.home() / ".cache" / "opsd_torch_ext"))}
    procs = [subprocess.Popen([sys.executable, __file__, str(tmp_path)], cwd=REPO,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for r, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {r} failed:\n{out[-4000:]}"
    assert_clean_teardown(tmp_path, world)
    for r in range(world):
        res = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert res["partitioned"], "ZeRO-3 did not partition the parameters; the test proves nothing"
        assert res["max_live"] <= res["largest_module"] < res["num_params"], res  # module by module
        detail = {k: res[k] for k in ("mismatch_before", "mismatch_after", "diffs")}
        assert res["mismatch_before"] == [] and res["mismatch_after"] == [], detail
        assert res["changed"] and "lm_head.weight" in res["names"]
    # the export (rank 0) holds the files a plain save_pretrained of the model writes: the
    # weights, not the rotary buffers (inv_freq) that a ZeRO-3 walk over modules also meets
    export = json.loads((tmp_path / "export.json").read_text())
    assert set(export["keys"]) ^ set(export["plain_keys"]) == set()
    assert not any("inv_freq" in k for k in export["keys"]) and export["max_diff"] < 1e-5


def _worker(out_dir: str) -> None:
    """One rank: wrap the tied tiny Qwen3 in ZeRO-3, compare the gathered weights with a plain
    copy before and after one SGD step (same batch on every rank, so the averaged gradient is the
    single-process gradient; SGD rather than AdamW because Adam's first step, g / |g|, turns
    reduction-order noise in near-zero gradients into differences of up to lr), and after the step
    also with one whole-model gather (exact)."""
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    from opsd.weight_sync import iter_hf_weights

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
    rank = torch.distributed.get_rank()
    model = _tiny_qwen3(tie=True, seed=0)
    ref = _tiny_qwen3(tie=True, seed=0)  # plain copy, the reference
    holder = _Holder(model)
    opt = torch.optim.SGD(holder.parameters(), lr=0.5)
    ds_cfg = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
              "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
              "steps_per_print": 10 ** 9}
    engine, *_ = deepspeed.initialize(model=holder, optimizer=opt, config=ds_cfg)
    all_params = list(model.parameters())
    partitioned = all(getattr(p, "ds_status", None) == ZeroParamStatus.NOT_AVAILABLE for p in all_params)

    def compare(want):
        got, max_live = {}, 0
        for name, t in iter_hf_weights(engine, zero_stage=3):
            live = sum(p.ds_numel for p in all_params if p.ds_status == ZeroParamStatus.AVAILABLE)
            max_live = max(max_live, live)
            got[name] = t.clone()
        bad = sorted(set(want) ^ set(got))
        bad += [k for k in want if k in got and not torch.allclose(got[k], want[k], atol=1e-5, rtol=0)]
        return got, bad, max_live

    got0, bad0, max_live = compare(ref.state_dict())
    batch = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    loss = engine(batch)
    engine.backward(loss)
    engine.step()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    ref(input_ids=batch, labels=batch).loss.backward()
    ref_opt.step()
    got1, bad1, _ = compare(ref.state_dict())
    with deepspeed.zero.GatheredParameters(all_params, modifier_rank=None):  # whole model: test only
        whole = {k: v.clone() for k, v in model.state_dict().items()}
    bad1 += [k for k in whole if not torch.equal(whole[k], got1[k])]
    _export(model, ref, Path(out_dir))
    res = {"partitioned": partitioned, "max_live": max_live, "num_params": sum(p.ds_numel for p in all_params),
           "largest_module": max(sum(p.ds_numel for p in m.parameters(recurse=False)) for m in model.modules()),
           "mismatch_before": bad0, "mismatch_after": bad1, "names": list(got1),
           "diffs": {k: (got1[k] - v).abs().max().item() for k, v in ref.state_dict().items() if k in got1},
           "changed": any(not torch.equal(got0[k], got1[k]) for k in got0)}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(res))


class _NoTokenizer:
    def save_pretrained(self, path):
        pass


def _export(model, ref, out_dir: Path) -> None:
    """``checkpoint.export_hf`` at ZeRO-3 (collective), then on rank 0 its tensors beside a plain
    ``save_pretrained`` of the reference."""
    from safetensors.torch import load_file

    from opsd import checkpoint

    checkpoint.export_hf(model, _NoTokenizer(), str(out_dir / "export"), zero_stage=3)
    if torch.distributed.get_rank() != 0:
        return
    ref.save_pretrained(out_dir / "plain")

    def load(folder):
        return {k: v for f in sorted(Path(folder).glob("*.safetensors")) for k, v in load_file(f).items()}

    got, want = load(out_dir / "export"), load(out_dir / "plain")
    diff = max((got[k] - want[k]).abs().max().item() for k in want.keys() & got.keys())
    (out_dir / "export.json").write_text(json.dumps({"keys": sorted(got), "plain_keys": sorted(want),
                                                     "max_diff": diff}))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    import _teardown

    _worker(sys.argv[1])
    _teardown.end_worker(sys.argv[1])  # after _worker: the engine is out of scope, its groups can go
