"""Several teachers in one run: each data row is distilled from the teacher it names.

Configured by a top-level ``teachers:`` list (:class:`opsd.config.TeacherSpec`: name, model,
placement, url), in process or served (:mod:`opsd.teacher_service`) alike::

    teachers:
      - {name: math, model: /ckpt/math-teacher}
      - {name: code, model: /ckpt/code-teacher, placement: server, url: http://10.0.0.7:8000}
    data:
      teacher_field: teacher          # each row's column naming its teacher (default), or
      teacher_router: mypkg.route:fn  # fn(row) -> name, e.g. by row["source_file"]

Rows without the field go to the first teacher listed. Every training row is routed once at setup,
before any teacher loads (:meth:`Routing.check_rows`): a row naming an unknown teacher stops the run before training,
naming its file and row.

:class:`TeacherPool` has the teacher interface of :mod:`opsd.teacher`. For each micro-batch it
cuts one sub-batch per teacher (the sequences routed to it; padded rows or packed segments),
sends every teacher all of its sub-batches of the step at once (served ones are then all in
flight), and joins the sources row by row (:class:`RoutedSource`): loss position ``i`` reads its
logits from its own teacher's source, in the micro-batch's row-major order, so each row's loss,
statistics and TIP selection are those of its own teacher. A ZeRO-3-sharded teacher scores every
micro-batch (an empty one where it has no row): its gathers are collectives, so every rank calls
it equally often. The teachers must share the student's tokenizer (each is checked as a single
teacher is); their exact hidden-state sources only (no top-k, no other tokenizer).

Per-teacher metrics: the pool labels each loss position with its teacher as a token group
(``batch["token_groups"]``; with an agent loop's token roles, a (role, teacher) pair), so the
trainer's per-group metrics (``group/teacher=NAME/tokens``, ``.../reverse_kl``) and a selector's
per-group diagnostics (TIP: ``tip/teacher=NAME/q3_frac``, ...) come per teacher.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
from typing import Callable, Dict, List, Optional, Sequence

import torch

log = logging.getLogger("opsd")


class UnknownTeacherError(ValueError):
    """A data row names a teacher that is not listed (raised before training starts)."""


def make_router(cfg, names: Sequence[str]) -> Callable[[dict], str]:
    """``row -> teacher name``: ``data.teacher_router`` if set, else the row's ``data.teacher_field``
    (rows without it, or with an empty value: the first teacher)."""
    from opsd.config import ConfigError

    spec = cfg.data.teacher_router
    if spec:
        mod, _, fn = spec.partition(":")
        try:
            return getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError, ValueError) as e:
            raise ConfigError(f"data.teacher_router={spec!r} cannot be imported ({e}); expected 'module:function'") \
                from None
    field, default = cfg.data.teacher_field, names[0]

    def by_field(row: dict) -> str:
        value = row.get(field)
        return default if value is None or value == "" else value

    by_field.__name__ = f"row[{field!r}]"
    return by_field


class RoutedSource:
    """The logit source of a micro-batch scored by several teachers: loss position ``i`` is row
    ``local[i]`` of ``parts[owner[i]]``. ``rows(idx)`` returns a fresh ``(n, V)`` tensor."""

    def __init__(self, parts: list, owner: torch.Tensor, local: torch.Tensor, vocab_size: int):
        self.parts, self.owner, self.local, self.vocab_size = parts, owner, local, vocab_size

    def __len__(self) -> int:
        return int(self.owner.numel())

    def resolve(self):
        for p in self.parts:
            if hasattr(p, "resolve"):
                p.resolve()
        return self

    def rows(self, idx) -> torch.Tensor:
        own, loc = self.owner[idx], self.local[idx]
        teachers = torch.unique(own).tolist()
        if not teachers:
            return torch.empty(0, self.vocab_size, device=self.owner.device)
        if len(teachers) == 1:
            return self.parts[teachers[0]].rows(loc)
        out = None
        for t in teachers:
            sel = (own == t).nonzero().flatten()
            part = self.parts[t].rows(loc[sel])
            if out is None:
                out = part.new_empty((own.numel(), part.shape[1]))
            out[sel] = part
        return out


def _sequence_map(batch: dict) -> torch.Tensor:
    """``(B, L)``: which of the micro-batch's sequences each token belongs to (padded: the row;
    packed: numbered where ``position_ids`` restart at 0)."""
    ids = batch["input_ids"]
    if batch.get("position_ids") is None:
        return torch.arange(ids.shape[0]).unsqueeze(1).expand_as(ids)
    return ((batch["position_ids"] == 0).long().cumsum(-1) - 1).view(ids.shape).cpu()


def sub_batch(batch: dict, keep: List[int]) -> dict:
    """The micro-batch of ``batch``'s sequences ``keep`` (indices into ``batch["rows"]``, sorted):
    padded rows or packed segments, in order, so its loss positions in row-major order are those
    of the kept sequences in ``batch``'s order. ``keep = []``: one token, no loss position."""
    ids = batch["input_ids"]
    if not keep:
        packed = batch.get("position_ids") is not None
        return {"input_ids": ids.new_zeros((1, 1)), "loss_mask": batch["loss_mask"].new_zeros((1, 1)),
                "attention_mask": None if packed else ids.new_ones((1, 1)),
                "position_ids": ids.new_zeros((1, 1)) if packed else None, "rows": []}
    rows = [batch["rows"][k] for k in keep]
    if batch.get("position_ids") is None:
        idx = torch.as_tensor(keep, dtype=torch.long)
        am = batch["attention_mask"][idx]
        width = int(am.sum(dim=1).max())
        return {"input_ids": ids[idx, :width], "attention_mask": am[:, :width],
                "loss_mask": batch["loss_mask"][idx, :width], "position_ids": None, "rows": rows}
    seq = _sequence_map(batch)[0]
    take = torch.isin(seq, torch.as_tensor(keep, dtype=seq.dtype))
    return {"input_ids": ids[:, take], "attention_mask": None, "loss_mask": batch["loss_mask"][:, take],
            "position_ids": batch["position_ids"][:, take], "rows": rows}


class Routing:
    """Which teacher each data row goes to: ``route(row) -> name`` among ``names``."""

    def __init__(self, names: Sequence[str], route: Callable[[dict], str]):
        self.names, self.route = list(names), route

    def index_of(self, row: dict) -> int:
        where = f"{row.get('source_file', '?')} row {row.get('source_row', row.get('index', '?'))}"
        try:
            name = self.route(row)
        except Exception as err:  # a user's router failing on a row: name the row, keep the cause
            raise UnknownTeacherError(f"{where}: the teacher router {getattr(self.route, '__name__', self.route)} "
                                      f"failed: {type(err).__name__}: {err}") from err
        try:
            return self.names.index(name)
        except ValueError:
            raise UnknownTeacherError(f"{where}: teacher {name!r} is not one of the teachers listed "
                                      f"({self.names}); fix the row or add the teacher under `teachers:`") from None

    def check_rows(self, rows) -> Dict[str, int]:
        """Route every row once (before training): an unknown name raises naming the row; returns
        the number of rows per teacher (logged)."""
        counts = {n: 0 for n in self.names}
        for i in range(len(rows)):
            counts[self.names[self.index_of(rows[i])]] += 1
        log.info("teachers: rows per teacher %s", counts)
        return counts


def routing(cfg) -> Routing:
    """The routing of ``cfg.teachers`` (names in their order) by ``data.teacher_router`` or ``data.teacher_field``."""
    names = [s.name for s in cfg.teachers]
    return Routing(names, make_router(cfg, names))


class TeacherPool:
    """Named teachers behind the teacher interface (:mod:`opsd.teacher`), rows routed by ``routing``."""

    def __init__(self, teachers: Dict[str, object], routing: Routing, device: torch.device,
                 always_score: Sequence[str] = ()):
        self.teachers, self.routing, self.device = teachers, routing, device
        self.names = routing.names
        self.always_score = set(always_score)  # ZeRO-3-sharded: called for every micro-batch
        self.width = min(t.width for t in teachers.values())
        self._roles: Dict[int, str] = {}
        self._sequences = {n: 0 for n in self.names}

    def group_names(self, roles: Dict[int, str]) -> Dict[int, str]:
        """The token-group names with teacher labels: ``teacher=NAME``, or ``ROLE@teacher=NAME``
        when the rollout loop labels token roles (label ``role * T + teacher``)."""
        self._roles = dict(roles)
        T = len(self.names)
        if not roles:
            return {t: f"teacher={n}" for t, n in enumerate(self.names)}
        return {r * T + t: f"{rn}@teacher={n}" for r, rn in roles.items() for t, n in enumerate(self.names)}

    # -- the teacher interface

    def prepare(self, packing: bool) -> None:
        for t in self.teachers.values():
            t.prepare(packing)

    def score_phase(self, batches: list, vocab_size: int, meta=None) -> list:
        if meta is None:
            raise ValueError("several teachers: score_phase needs the step's data rows (meta) to route them")
        T = len(self.names)
        owners = [[self.routing.index_of(meta[j]) for j in b["rows"]] for b in batches]
        subs = {t: [] for t in range(T)}  # per teacher: (batch index, its sub-batch)
        for i, (b, own) in enumerate(zip(batches, owners)):
            for t, name in enumerate(self.names):
                keep = [k for k, o in enumerate(own) if o == t]
                self._sequences[name] += len(keep)
                if keep or name in self.always_score:
                    subs[t].append((i, sub_batch(b, keep)))
        scored = {}  # (batch index, teacher) -> source
        for t, name in enumerate(self.names):  # every sub-batch of a teacher at once (served: all in flight)
            sources = self.teachers[name].score_phase([s for _, s in subs[t]], vocab_size, meta)
            scored.update({(i, t): src for (i, _), src in zip(subs[t], sources)})
        out = []
        for i, (b, own) in enumerate(zip(batches, owners)):
            mask = b["loss_mask"].bool()
            if own:
                per_pos = torch.as_tensor(own, dtype=torch.long)[_sequence_map(b)]  # (B, L) teacher of each token
            else:  # an empty micro-batch (one padding token, no loss position)
                per_pos = torch.zeros(b["input_ids"].shape, dtype=torch.long)
            owner = per_pos[mask.cpu()]  # (N,) row-major
            local = torch.zeros_like(owner)
            for t in range(T):
                at = owner == t
                local[at] = torch.arange(int(at.sum()))
            parts = [scored.get((i, t)) for t in range(T)]
            out.append(RoutedSource(parts, owner.to(self.device), local.to(self.device), vocab_size))
            groups = per_pos.clone()
            if self._roles and b.get("token_groups") is not None:
                groups = b["token_groups"].cpu() * T + per_pos
            b["token_groups"] = torch.where(mask.cpu(), groups, torch.zeros_like(groups))
        return out

    def after_update(self) -> None:
        for t in self.teachers.values():
            t.after_update()

    def metrics(self) -> dict:
        """Per teacher: sequences routed to it this step on this rank (``teachers/NAME/sequences``), and
        each teacher's own metrics under its name (a served one's ``teacher/wait_s``, ...)."""
        out = {}
        for name, t in self.teachers.items():
            out[f"teachers/{name}/sequences"] = float(self._sequences[name])
            self._sequences[name] = 0
            for k, v in t.metrics().items():
                out[f"teachers/{name}/{k.split('/', 1)[-1]}"] = v
        return out

    def close(self) -> None:
        for t in self.teachers.values():
            t.close()


def build_pool(cfg, device: torch.device, tokenizer, build_one: Callable) -> TeacherPool:
    """The pool of ``cfg.teachers``: each built by ``build_one(cfg', device, tokenizer)`` from a copy of
    ``cfg`` naming that teacher (model.teacher, engine.teacher_placement, engine.teacher_url)."""
    teachers, sharded = {}, []
    try:
        for spec in cfg.teachers:
            placement = spec.placement or cfg.engine.teacher_placement
            engine = dataclasses.replace(cfg.engine, teacher_placement=placement,
                                         teacher_url=spec.url or (cfg.engine.teacher_url if placement == "server"
                                                                  else ""))
            one = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, teacher=spec.model), engine=engine,
                                      teachers=[])
            log.info("teacher %r: %s (%s)", spec.name, spec.model, placement)
            teachers[spec.name] = build_one(one, device, tokenizer)
            if placement != "server" and cfg.engine.teacher_sharding == "zero3":
                sharded.append(spec.name)
    except BaseException:
        for t in teachers.values():
            t.close()
        raise
    return TeacherPool(teachers, routing(cfg), device, sharded)
