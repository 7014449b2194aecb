"""Fixtures of the TIP tests: TokenStats from plain lists, and a hook that is always restored."""
import pytest
import torch

from opsd import hooks
from opsd.hooks import TokenStats


def stats_of(entropy, reverse_kl, forward_kl=None, teacher_entropy=None, dtype=torch.float32) -> TokenStats:
    """TokenStats from lists; forward KL and teacher entropy default to reverse KL and zeros."""
    t = lambda x: torch.as_tensor(x, dtype=dtype)  # noqa: E731
    h, d = t(entropy), t(reverse_kl)
    return TokenStats(entropy=h, reverse_kl=d, forward_kl=d.clone() if forward_kl is None else t(forward_kl),
                      teacher_entropy=torch.zeros_like(h) if teacher_entropy is None else t(teacher_entropy))


def random_stats(n: int, seed: int = 0) -> TokenStats:
    """Entropy and divergences with the heavy right tail of real OPD statistics."""
    g = torch.Generator().manual_seed(seed)
    r = lambda: torch.rand(n, generator=g, dtype=torch.float64) ** 3 * 4  # noqa: E731
    return TokenStats(entropy=r(), reverse_kl=r(), forward_kl=r(), teacher_entropy=r() / 4)


@pytest.fixture
def make_stats():
    return stats_of


@pytest.fixture
def rand_stats():
    return random_stats


@pytest.fixture(autouse=True)
def restore_hook():
    """A failing test must not leave a TIP selector installed for the next one."""
    import tip_patches.patch as patch

    yield
    hooks.select_tokens = hooks.select_all
    patch._active = None
