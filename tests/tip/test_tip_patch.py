"""apply / remove / patched, selector state, TipConfig validation and the opsd plugin section."""
import io

import pytest
import torch

import tip_patches
from opsd import hooks
from opsd.config import ConfigError, load_config
from tip_patches import TipConfig, select

REQUIRED = ["model.student=s", "model.teacher=t", "data.train_files=prompts.jsonl"]


def test_apply_installs_and_remove_restores(rand_stats):
    original = hooks.select_tokens
    assert original is hooks.select_all
    handle = tip_patches.apply(TipConfig(rule="soft_or", ratio=0.2, seed=0))
    assert hooks.select_tokens is handle.selector is not original
    assert hooks.active_selector_name() == "tip:soft_or@0.2"
    s = rand_stats(50)
    sel = hooks.select_tokens(s)  # how the trainer calls it
    assert torch.equal(sel.indices, select(s, "soft_or", 0.2).indices)
    assert handle.selector.last_diagnostics["tip/kept_frac"] == pytest.approx(0.2)
    handle.remove()
    assert hooks.select_tokens is original and hooks.active_selector_name() == "all"
    handle.remove()  # idempotent
    assert len(hooks.select_tokens(s).indices) == 50


def test_double_apply_is_refused():
    handle = tip_patches.apply(rule="q3", ratio=0.1)
    with pytest.raises(RuntimeError, match=r"already patched \('tip:q3@0.1'\).*remove"):
        tip_patches.apply(rule="soft_or", ratio=0.5)
    assert hooks.select_tokens is handle.selector  # the first patch is untouched
    handle.remove()
    tip_patches.apply(rule="soft_or", ratio=0.5).remove()  # after remove, apply works again


def test_apply_refuses_to_stack_on_a_foreign_patch():
    def custom(stats):
        return hooks.select_all(stats)

    hooks.select_tokens = custom
    with pytest.raises(RuntimeError, match="custom"):
        tip_patches.apply(rule="soft_or", ratio=0.5)
    assert hooks.select_tokens is custom


def test_remove_refuses_to_clobber_a_later_patch():
    handle = tip_patches.apply(rule="soft_or", ratio=0.5)
    hooks.select_tokens = lambda stats: None  # someone else replaced the hook meanwhile
    with pytest.raises(RuntimeError, match="remove that patch first"):
        handle.remove()


def test_context_manager_restores_even_on_error(rand_stats):
    with tip_patches.patched(TipConfig(rule="entropy_topk", ratio=0.5)) as selector:
        assert hooks.select_tokens is selector
        assert tip_patches.active_handle().selector is selector
        assert len(hooks.select_tokens(rand_stats(10)).indices) == 5
    assert hooks.select_tokens is hooks.select_all and tip_patches.active_handle() is None
    with pytest.raises(KeyError):
        with tip_patches.patched(rule="soft_or", ratio=0.5):
            raise KeyError("boom")
    assert hooks.select_tokens is hooks.select_all


def test_selector_names():
    assert tip_patches.TipSelector(TipConfig()).selector_name == "tip:all@1"
    name = tip_patches.TipSelector(TipConfig(rule="entropy_sample", ratio=0.5, importance_weighted=True,
                                             normalization="running")).selector_name
    assert name == "tip:entropy_sample@0.5+iw+running"


def _roundtrip(state, weights_only):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=weights_only)


@pytest.mark.parametrize("weights_only", [False, True])
def test_state_dict_resumes_rng_and_running_normalization(rand_stats, weights_only):
    cfg = TipConfig(rule="entropy_sample", ratio=0.3, normalization="running", running_momentum=0.5, seed=11)
    a = tip_patches.TipSelector(cfg)
    for i in range(3):
        a(rand_stats(40, seed=i))
    state = _roundtrip(a.state_dict(), weights_only)
    b = tip_patches.TipSelector(cfg)
    b.load_state_dict(state)
    assert b.calls == 3 and b.normalizers[0].state_dict() == a.normalizers[0].state_dict()
    for i in range(3, 6):
        sa, sb = a(rand_stats(40, seed=i)), b(rand_stats(40, seed=i))
        assert torch.equal(sa.indices, sb.indices)


def test_state_dict_continues_the_exact_sample_sequence(rand_stats):
    cfg = TipConfig(rule="entropy_sample", ratio=0.2, seed=3)
    a = tip_patches.TipSelector(cfg)
    a(rand_stats(100))
    state = a.state_dict()
    expected = a(rand_stats(100)).indices
    b = tip_patches.TipSelector(cfg)
    assert not torch.equal(b(rand_stats(100)).indices, expected)  # first draw of a fresh selector differs
    b.load_state_dict(state)
    assert torch.equal(b(rand_stats(100)).indices, expected)


def test_load_state_dict_of_another_rule_is_refused():
    state = tip_patches.TipSelector(TipConfig(rule="soft_or", ratio=0.2)).state_dict()
    with pytest.raises(ValueError, match="tip:q3@0.2"):
        tip_patches.TipSelector(TipConfig(rule="q3", ratio=0.2)).load_state_dict(state)


def test_seed_none_means_zero(rand_stats):
    a = tip_patches.TipSelector(TipConfig(rule="entropy_sample", ratio=0.2))
    b = tip_patches.TipSelector(TipConfig(rule="entropy_sample", ratio=0.2, seed=0))
    assert torch.equal(a(rand_stats(60)).indices, b(rand_stats(60)).indices)


@pytest.mark.parametrize("option,value", [
    ("rule", "topk"), ("ratio", 0.0), ("ratio", 1.2), ("normalization", "zscore"), ("running_momentum", 1.0),
    ("entropy_alpha", 0.0), ("sample_floor", 0.0), ("quadrant_threshold", "mean"), ("entropy_threshold", 1.5),
    ("divergence_threshold", -0.1), ("adaptive_tau", -1.0), ("seed", 1.5)])
def test_validate_names_the_option(option, value):
    base = {"rule": "soft_or", "ratio": 0.5}
    with pytest.raises(ConfigError, match=rf"tip\.{option}"):
        TipConfig(**{**base, option: value}).validate()


def test_validate_rejects_meaningless_combinations():
    with pytest.raises(ConfigError, match=r"tip\.ratio=0\.2 has no effect with tip\.rule=all"):
        TipConfig(ratio=0.2).validate()
    with pytest.raises(ConfigError, match=r"tip\.importance_weighted"):
        TipConfig(rule="soft_or", ratio=0.2, importance_weighted=True).validate()
    TipConfig(rule="adaptive_kl", ratio=0.2, importance_weighted=True).validate()


def test_every_field_has_help():
    import dataclasses

    assert all(f.metadata.get("help") for f in dataclasses.fields(TipConfig))


# ------------------------------------------------------------------ the plugin section

@pytest.fixture
def tip_plugin(monkeypatch):
    import opsd.plugins

    monkeypatch.setenv("OPSD_PLUGINS", "tip_patches.plugin")
    monkeypatch.setattr(opsd.plugins, "_registry", None)  # the registry is cached module-wide
    yield
    opsd.plugins._registry = None


def test_config_loads_a_tip_section(tip_plugin):
    cfg = load_config(None, REQUIRED + ["tip.rule=soft_or", "tip.ratio=0.2"])
    tip = cfg.plugins["tip"]
    assert isinstance(tip, TipConfig) and (tip.rule, tip.ratio, tip.seed) == ("soft_or", 0.2, None)
    assert cfg.to_dict()["tip"]["rule"] == "soft_or"


def test_config_without_tip_section_is_plain_opd(tip_plugin):
    assert load_config(None, REQUIRED).plugins == {}


def test_config_errors_name_the_tip_option(tip_plugin):
    with pytest.raises(ConfigError, match=r"tip\.ratio"):
        load_config(None, REQUIRED + ["tip.rule=soft_or", "tip.ratio=2"])
    with pytest.raises(ConfigError, match=r"tip\.rul.*did you mean tip\.rule"):
        load_config(None, REQUIRED + ["tip.rul=soft_or"])


def test_plugin_activate_seeds_from_train_seed(tip_plugin):
    from opsd.plugins import registry

    cfg = load_config(None, REQUIRED + ["tip.rule=entropy_sample", "tip.ratio=0.5", "train.seed=7"])
    handle = registry().sections["tip"].activate(cfg.plugins["tip"], cfg)
    try:
        assert hooks.active_selector_name() == "tip:entropy_sample@0.5"
        assert handle.selector.config.seed == 7 and cfg.plugins["tip"].seed is None
    finally:
        handle.remove()
    assert hooks.select_tokens is hooks.select_all
    cfg = load_config(None, REQUIRED + ["tip.rule=entropy_sample", "tip.ratio=0.5", "tip.seed=3", "train.seed=7"])
    handle = registry().sections["tip"].activate(cfg.plugins["tip"], cfg)
    assert handle.selector.config.seed == 3  # an explicit tip.seed wins
    handle.remove()


def test_describe_lists_tip_help(tip_plugin):
    from opsd.config import describe

    assert "tip.ratio = 1.0  # retention ratio" in describe()
