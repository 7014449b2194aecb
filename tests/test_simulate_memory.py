"""bench/simulate_memory.py: the fake-tensor step against a measured one, and its bookkeeping."""
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import simulate_memory as S  # noqa: E402

TINY_S = dict(model_type="qwen3", hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=32, vocab_size=32_000, tie_word_embeddings=True)
TINY_T = dict(TINY_S, hidden_size=192, tie_word_embeddings=False)


def tiny_setup(**kw) -> S.Setup:
    base = dict(student_cfg=TINY_S, teacher_cfg=TINY_T, vocab_size=32_000, world=1, seqs=2, prompt_len=16,
                response_len=256, n_micro=2, chunk_size=128, dtype="float32")
    return S.Setup(**{**base, **kw})


def test_categories_sum_to_the_total_in_every_phase():
    res = S.simulate(tiny_setup(), "autograd", 0.5)
    assert res.kept == math.ceil(0.5 * 2 * 256)
    for phase, (total, cats) in res.phases.items():
        assert sum(cats.values()) == total, phase
    assert {"teacher scoring", "student forward", "statistics pass", "grad pass", "backward",
            "optimizer step"} <= set(res.phases)
    assert res.peak == max(v[0] for v in res.phases.values())


def test_zero_shares_divide_by_world_size():
    """ZeRO-2 at W = 4: optimizer states 12 / W bytes per parameter, the gradient partition 4 / W,
    the bf16 weights whole; a lower ratio keeps fewer rows and needs less memory."""
    setup = tiny_setup(world=4, dtype="bfloat16")
    models = S.Models(setup)
    n = S._numel(models.student)
    res = S.simulate(setup, "autograd", 1.0, models)
    cats = res.phases["optimizer step"][1]
    assert cats["optimizer states"] >= 12 * math.ceil(n / 4)
    assert cats["optimizer states"] <= 16 * math.ceil(n / 4)  # + one fp32 temporary of AdamW's step
    init_params = 2 * n + 2 * S._numel(models.teacher.model)
    assert res.phases["teacher scoring"][1]["parameters"] == init_params
    low = S.simulate(setup, "autograd", 0.1, models)
    assert low.peak < res.peak


def test_offloaded_teacher_keeps_its_head_and_a_sharded_one_its_partition():
    """Unsharded + offload: the body leaves the device after scoring, the LM head stays (the real
    Teacher keeps ``head_weight`` there). Sharded ZeRO-3 at W = 4: 1/W of the teacher plus the head
    replica for the whole step, and while it scores a gathered working set on top."""
    setup = tiny_setup(world=4, dtype="bfloat16", teacher_placement="offload")
    models = S.Models(setup)
    n_s, n_t = S._numel(models.student), S._numel(models.teacher.model)
    head = models.teacher.model.get_output_embeddings().weight.numel()
    res = S.simulate(setup, "fused", 1.0, models)
    assert res.phases["teacher scoring"][1]["parameters"] == 2 * n_s + 2 * n_t
    assert res.phases["backward"][1]["parameters"] == 2 * n_s + 2 * head
    sharded = S.simulate(setup.with_engine(dict(teacher_placement="resident", teacher_sharding="zero3")),
                         "fused", 1.0, models)
    train = 2 * n_s + 2 * (math.ceil(n_t / 4) + head)
    assert sharded.phases["backward"][1]["parameters"] == train
    assert sharded.phases["teacher scoring"][1]["parameters"] > train  # + the gathered modules


def test_upstream_row_keeps_its_pinned_engine():
    """The upstream-style baseline runs on the engine it was defined with, whatever the recipe says
    now: a leaner opsd recipe cannot shrink it."""
    for name, pair in S.PAIRS.items():
        setup = S.setup_for_pair(name)
        assert setup.with_engine(pair.upstream_engine).engine() == pair.upstream_engine, name
    assert S.PAIRS["qwen3-8b-4b"].upstream_engine == dict(zero_stage=2, offload_optimizer=False,
                                                          offload_params=False, teacher_placement="resident",
                                                          teacher_sharding="none")
    with pytest.raises(ValueError, match="micro_batch"):
        tiny_setup().with_engine(dict(micro_batch=2))


def test_nothing_real_is_allocated_for_a_large_model():
    """A 4B-parameter student would need 8 GB: under FakeTensorMode building it costs nothing."""
    import resource

    cfg = S.load_config("Qwen3-4B")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        model = S.build_model(cfg, torch.bfloat16)
    assert abs(S._numel(model) - 4.02e9) < 0.01e9
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500 * 1024  # kB


@pytest.mark.slow
@pytest.mark.parametrize("path", ["fused", "autograd", "upstream"])
def test_simulated_peak_within_10_percent_of_measured(path):
    """The same step for real on CPU (fresh process, peak RSS above the resident inputs) and under
    fake tensors: the simulated peak is within 10 % of the measured one."""
    if path != "upstream" and path not in S.loss_impls()[0]:
        pytest.skip(f"opsd has no loss.impl={path}")
    setup = S.validation_setup("v32k")
    sim, _ = S.simulated_step_bytes(setup, path, 1.0)
    measured = S.measure_in_child("v32k", path, 1.0)
    assert abs(sim - measured) / measured < 0.10, (sim / 2**20, measured / 2**20)
