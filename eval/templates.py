"""Prompt templates: how a benchmark problem becomes the user message.

The user message then goes through the model's chat template (``eval.run``). A template is a
string with one ``{problem}`` placeholder, filled with ``str.replace`` rather than ``str.format``
because the boxed instruction itself contains braces.

- ``boxed``: the upstream instruction (DeepSeek-R1 / Qwen2.5-Math evaluation style)
- ``plain``: the problem text alone
- ``dapo``:  the DAPO-Math-17k training prompt ("Answer: $Answer" on the last line), to evaluate
             in the format the student was distilled on
"""
from __future__ import annotations

from typing import Dict

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DAPO_PREFIX = ("Solve the following math problem step by step. The last line of your response "
               "should be of the form Answer: $Answer (without quotes) where $Answer is the answer "
               "to the problem.\n\n")
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'

TEMPLATES: Dict[str, str] = {
    "boxed": "{problem}\n" + BOXED_INSTRUCTION,
    "plain": "{problem}",
    "dapo": DAPO_PREFIX + "{problem}" + DAPO_SUFFIX,
}


def resolve_template(name_or_text: str) -> str:
    """A registered template by name, or a literal template containing ``{problem}``."""
    if name_or_text in TEMPLATES:
        return TEMPLATES[name_or_text]
    if "{problem}" in name_or_text:
        return name_or_text
    raise ValueError(f"--template {name_or_text!r}: not one of {sorted(TEMPLATES)} and has no "
                     "'{problem}' placeholder")


def render(template: str, problem: str) -> str:
    """The user message for ``problem`` under ``template`` (a name or a literal template)."""
    return resolve_template(template).replace("{problem}", problem)


def strip_dapo_instruction(prompt: str) -> str:
    """The bare problem of a DAPO-Math-17k user message (its fixed prefix/suffix removed)."""
    if prompt.startswith(DAPO_PREFIX):
        prompt = prompt[len(DAPO_PREFIX):]
    if prompt.endswith(DAPO_SUFFIX):
        prompt = prompt[: -len(DAPO_SUFFIX)]
    return prompt
