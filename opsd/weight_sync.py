"""The student's full named weights, gathered under ZeRO-3: ``(HF name, tensor)`` pairs, the
entries of the model's ``state_dict``. The one way to read them: the weight sync to a rollout engine
(vLLM; ``Trainer.named_student_weights``) and the HF export (``opsd.checkpoint.export_hf``).

The student may be a plain HF model, a wrapper around one (``opsd.distill.DistillModule``), or a
DeepSpeed engine around either. Under ZeRO-3 every rank holds only a shard of each parameter, so
the full tensors are gathered **one module at a time** (``GatheredParameters`` over that module's
own parameters): peak extra memory is the largest single module (usually the embedding), never
the whole model, which would not fit next to the optimizer state at the sizes ZeRO-3 is for.

Contract (ZeRO-3): gathering is a collective, so **every rank must run the iterator to the end**,
in the same order, even a rank that discards the tensors. Without ``copy=True`` a yielded tensor
is the gathered parameter itself and is only valid until the next pair is requested (it is
re-partitioned then); consumers like vLLM's ``load_weights`` copy it at once, which is the point.

Tied embeddings: HF deduplicates tied parameters (``named_parameters`` shows
``model.embed_tokens.weight`` only), but a consumer may keep a separate ``lm_head.weight``
(vLLM does when its model code does not tie, e.g. after a config or quantisation change, and some
TP layouts shard the two differently), so every alias of a shared parameter is yielded, from the
one gather. vLLM's Qwen/Llama loaders skip ``lm_head.*`` when they tie, so the extra name is free.

Buffers: the persistent ones are part of the weights (``state_dict`` has them); the
non-persistent ones (rotary ``inv_freq``, recomputed from the config) are not, and are left out:
a walk over modules meets them too, and an export that wrote them would add tensors the model
does not load.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

# Prefixes that wrappers add to parameter names: DeepSpeed/DDP (``module.``), torch.compile
# (``_orig_mod.``), FSDP1. Stripped when the HF model cannot be found by unwrapping.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.")


def unwrap_student(module: nn.Module) -> nn.Module:
    """The HF ``PreTrainedModel`` inside DeepSpeed/DDP engines and ``DistillModule``-style
    holders (an attribute ``.model``); the module itself when no HF model is found."""
    from transformers import PreTrainedModel

    seen = set()
    m = module
    while not isinstance(m, PreTrainedModel) and id(m) not in seen:
        seen.add(id(m))
        inner = getattr(m, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(m, "model", None)
        if not isinstance(inner, nn.Module):
            return module
        m = inner
    return m


def _strip_prefixes(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _WRAPPER_PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p):], True
    return name


def _is_partitioned(p: torch.Tensor) -> bool:
    """A ZeRO-3 parameter (DeepSpeed attaches ``ds_id``/``ds_status`` to those)."""
    return hasattr(p, "ds_id")


def _aliases(model: nn.Module) -> Dict[int, List[str]]:
    """id(parameter) -> every name it has (a tied parameter has several), in module order."""
    names: Dict[int, List[str]] = defaultdict(list)
    for name, p in model.named_parameters(remove_duplicate=False):
        names[id(p)].append(_strip_prefixes(name))
    return names


def _persistent_buffers(mod: nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """``mod``'s own buffers that its ``state_dict`` holds."""
    skip = getattr(mod, "_non_persistent_buffers_set", set())
    return [(n, b) for n, b in mod.named_buffers(recurse=False) if n not in skip]


def iter_hf_weights(module: nn.Module, zero_stage: Optional[int] = None, copy: bool = False,
                    include_tied: bool = True) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, full_tensor)`` for every entry of the student's ``state_dict``
    (parameters, then each module's persistent buffers), in module order.

    ``zero_stage``: the DeepSpeed ZeRO stage the student was wrapped with (``None``: detect from the
    parameters). Stages 0-2 keep full parameters on every rank, so nothing is gathered; stage 3
    gathers module by module (collective: all ranks must iterate to the end).
    ``copy``: yield detached clones that stay valid after the iteration moves on (tests, CPU
    checkpoints); default is the live, gathered tensor.
    ``include_tied``: also yield the extra names of tied parameters (``lm_head.weight``).
    """
    model = unwrap_student(module)
    aliases = _aliases(model)
    done = set()
    gather_possible = zero_stage is None or zero_stage == 3
    for mod_name, mod in model.named_modules():
        own = [p for _, p in mod.named_parameters(recurse=False) if id(p) not in done]
        to_gather = [p for p in own if gather_possible and _is_partitioned(p)]
        with _gathered(to_gather):
            for p in own:
                done.add(id(p))
                names = aliases[id(p)] if include_tied else aliases[id(p)][:1]
                for name in names:
                    t = p.detach()
                    yield name, (t.clone() if copy else t)
        for n, b in _persistent_buffers(mod):  # never partitioned by ZeRO
            t = b.detach()
            yield _strip_prefixes(f"{mod_name}.{n}" if mod_name else n), (t.clone() if copy else t)


def _gathered(params: List[torch.Tensor]):
    """Read-only gather of ZeRO-3 partitioned ``params`` (no-op when none are partitioned)."""
    if not params:
        return nullcontext()
    import deepspeed  # lazy: opsd imports without DeepSpeed

    # modifier_rank=None: nobody writes, so nothing is re-partitioned from a source rank on exit.
    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

