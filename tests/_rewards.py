"""Reward functions for the tests' tiny worlds, importable as `_rewards:<name>` from a config.

They live in their own module (not conftest.py) because several conftest.py files exist under
tests/ and which one owns the name `conftest` in sys.modules depends on collection order."""


def toy_reward(text, answer):
    """Reward for the fixture's prompts: the response starts with the answer."""
    return float(text.strip().startswith(str(answer)))
