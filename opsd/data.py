"""Data: prompt files -> chat-templated prompt ids -> per-rank batches -> padded sequences + masks.

The stages, in the order the trainer uses them:

1. :func:`load_prompt_dataset` reads local ``.jsonl`` / ``.json`` / ``.parquet`` files (or folders
   of them) with ``datasets`` into one :class:`datasets.Dataset` with canonical columns ``prompt``
   (a string, or a list of chat messages), ``answer`` (string or None), ``source_file``,
   ``source_row`` and, for multi-turn data, ``messages``. Bad input fails with the file, line or row.
2. :class:`PromptDataset` renders every prompt with the tokenizer's chat template (generation
   prompt appended), drops prompts longer than ``max_prompt_length`` tokens, and serves items
   ``{"prompt_ids": list[int], "answer": str | None, "index": int}``.
3. :class:`PromptSampler` shuffles deterministically per (seed, epoch) and cuts global batches of
   ``prompts_per_step`` prompts; rank r takes the r-th contiguous shard. Its state is global (not
   per rank), so a resumed run, even at another world size, sees the same global batches.
Sequences, micro-batches and the loss-mask convention are :mod:`opsd.batching`'s.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

logger = logging.getLogger(__name__)

# Extension -> `datasets` packaged builder. ".json" may hold one JSON document or JSON lines.
SUPPORTED_EXTENSIONS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
PROMPT_PLACEHOLDER = "{prompt}"
_MISSING = object()
_warned: set = set()


def _warn_once(key: str, message: str) -> None:
    # Per-row conditions (e.g. a template without the thinking switch) would otherwise flood the log.
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)


# --------------------------------------------------------------------------------------------
# 1. Loading
# --------------------------------------------------------------------------------------------


def resolve_data_files(files: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> List[str]:
    """Expand folders (their supported files, sorted, not recursive) and check every path.

    Raises FileNotFoundError naming a missing file or an empty folder, ValueError naming a file with
    an unsupported extension.
    """
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    resolved: List[str] = []
    for entry in files:
        path = Path(entry).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS)
            if not found:
                raise FileNotFoundError(f"data folder {path} holds no {'/'.join(SUPPORTED_EXTENSIONS)} files")
            resolved.extend(str(p) for p in found)
        elif not path.exists():
            raise FileNotFoundError(f"data file not found: {path}")
        elif path.suffix.lower() not in SUPPORTED_EXTENSIONS:
            raise ValueError(
                f"unsupported data file extension '{path.suffix}' for {path}: "
                f"use one of {', '.join(SUPPORTED_EXTENSIONS)}"
            )
        else:
            resolved.append(str(path))
    if not resolved:
        raise ValueError("no data files given (data.train_files is empty)")
    return resolved


def load_prompt_dataset(
    files: Union[str, Sequence[str]],
    prompt_field: str = "prompt",
    answer_field: Optional[str] = "answer",
    messages_field: Optional[str] = None,
    cache_dir: Optional[str] = None,
    keep_fields: Sequence[str] = (),
):
    """Read prompt files into one ``datasets.Dataset`` with canonical columns.

    Columns: ``prompt`` (str, or list of ``{"role", "content", ...}`` messages), ``answer`` (str or
    None; numbers are stringified), ``source_file``, ``source_row`` (0-based row in that file) and,
    when ``messages_field`` is set, ``messages`` (the whole conversation). With ``messages_field``
    the prompt is the conversation without its trailing assistant turns (the turn the student
    generates) and ``prompt_field`` is not read. Field names may be dotted paths into nested
    records, e.g. ``answer_field="reward_model.ground_truth"`` (DAPO-Math-17k). ``keep_fields``:
    more columns kept as they are, under their own names (None in rows or files without them),
    e.g. ``data.teacher_field`` (several teachers, :mod:`opsd.teachers`).
    """
    import datasets  # lazy: keeps `import opsd` light

    columns: Dict[str, list] = {"prompt": [], "answer": [], "source_file": [], "source_row": []}
    if messages_field:
        columns["messages"] = []
    for name in keep_fields:
        columns.setdefault(name, [])
    for path in resolve_data_files(files):
        table = _load_file(path, cache_dir)
        for key, values in _normalize_file(table, path, prompt_field, answer_field, messages_field).items():
            columns[key].extend(values)
        for name in keep_fields:
            if name not in ("prompt", "answer", "source_file", "source_row", "messages"):
                columns[name].extend(None if (v := _field(row, name)) is _MISSING else v for row in table)
    _check_same_prompt_kind(columns["prompt"], columns["source_file"])
    try:
        return datasets.Dataset.from_dict(columns)
    except Exception as err:  # pyarrow cannot unify the message schemas of different rows/files
        files = sorted(set(columns["source_file"]))
        raise ValueError(f"prompt files {files} have incompatible row types: {err}") from err


class EpisodeRows:
    """Agentic episodes: every row of the data files with all of its columns (the environment
    reads them), plus ``source_file`` and ``source_row``; ``batch(indices)`` like
    :class:`PromptDataset`."""

    def __init__(self, rows: List[dict]):
        self.rows = rows

    @classmethod
    def from_files(cls, files: Union[str, Sequence[str]], cache_dir: Optional[str] = None) -> "EpisodeRows":
        rows = []
        for path in resolve_data_files(files):
            for i, row in enumerate(_load_file(path, cache_dir)):
                rows.append({**row, "source_file": path, "source_row": i})
        if not rows:
            raise ValueError(f"episode files {list(files) if not isinstance(files, str) else files} hold no rows")
        return cls(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]

    def batch(self, indices: Sequence[int]) -> List[dict]:
        return [self.rows[i] for i in indices]


def _load_file(path: str, cache_dir: Optional[str]):
    """One file through ``datasets.load_dataset`` (local packaged builder, no Hub access)."""
    from datasets import load_dataset

    builder = SUPPORTED_EXTENSIONS[Path(path).suffix.lower()]
    try:
        return load_dataset(builder, data_files=[path], split="train", cache_dir=cache_dir)
    except Exception as err:
        raise ValueError(_explain_load_error(path, builder, err)) from err


def _explain_load_error(path: str, builder: str, err: Exception) -> str:
    # `datasets` wraps the parser error (DatasetGenerationError -> ArrowInvalid "in row 1") without
    # the file or line, so for JSON we re-scan the file ourselves to point at the bad line.
    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    where = _find_bad_json(path) if builder == "json" else None
    if where:
        return f"malformed JSON in {path}: {where}"
    return f"could not read {builder} file {path}: {type(root).__name__}: {root}"


def _find_bad_json(path: str) -> Optional[str]:
    """``"line N: reason"`` for the first unparsable line (JSON lines) or document position."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        return f"not UTF-8 text ({err})"
    lines = text.splitlines()
    if Path(path).suffix.lower() == ".json":  # one JSON document, or JSON lines under a .json name
        try:
            json.loads(text)
            return None  # valid JSON: the failure lies elsewhere (e.g. mixed column types)
        except json.JSONDecodeError as err:
            if not _parses(next((line for line in lines if line.strip()), "")):
                return f"line {err.lineno}, column {err.colno}: {err.msg}"
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            return f"line {lineno}, column {err.colno}: {err.msg}"
        if not isinstance(record, dict):
            return f"line {lineno}: expected a JSON object per line, got {type(record).__name__}"
    return None


def _parses(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False


def _normalize_file(table, path: str, prompt_field: str, answer_field: Optional[str],
                    messages_field: Optional[str]) -> Dict[str, list]:
    """Canonical columns of one file; raises naming the file and row on a bad record."""
    if table.num_rows == 0:
        raise ValueError(f"{path}: the file holds no rows")
    main_field = messages_field or prompt_field
    _require_column(table, path, main_field, "messages_field" if messages_field else "prompt_field")
    has_answer = bool(answer_field) and answer_field.split(".")[0] in table.column_names
    if answer_field and not has_answer:
        _warn_once(f"answer:{path}", f"{path}: no column '{answer_field}'; answers are None")
    out: Dict[str, list] = {"prompt": [], "answer": [], "source_file": [], "source_row": []}
    if messages_field:
        out["messages"] = []
    for row_idx, row in enumerate(table):
        value = _field(row, main_field)
        if messages_field:
            out["messages"].append(_check_messages(value, path, row_idx, messages_field))
            value = _prompt_part(out["messages"][-1], path, row_idx)
        out["prompt"].append(_check_prompt(value, path, row_idx, prompt_field))
        out["answer"].append(_as_answer(_field(row, answer_field)) if has_answer else None)
        out["source_file"].append(path)
        out["source_row"].append(row_idx)
    return out


def _require_column(table, path: str, name: str, option: str) -> None:
    if name.split(".")[0] not in table.column_names:
        raise ValueError(f"{path}: no column '{name}' (data.{option}); columns are {table.column_names}")


def _field(row: Mapping, name: Optional[str]) -> Any:
    """``row[name]``, or a dotted path into nested records; ``_MISSING`` when absent."""
    if name is None:
        return _MISSING
    if name in row:
        return row[name]
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _where(path: str, row_idx: int) -> str:
    # For JSON lines also give the line number, which is what an editor shows.
    if Path(path).suffix.lower() == ".jsonl":
        return f"{path}, row {row_idx} (line {_line_of_record(path, row_idx)})"
    return f"{path}, row {row_idx}"


def _line_of_record(path: str, row_idx: int) -> Union[int, str]:
    with open(path, encoding="utf-8") as fh:
        seen = -1
        for lineno, line in enumerate(fh, start=1):
            seen += bool(line.strip())  # blank lines hold no record
            if seen == row_idx:
                return lineno
    return "?"


def _check_prompt(value: Any, path: str, row_idx: int, prompt_field: str) -> Any:
    if value is _MISSING or value is None:
        raise ValueError(f"{_where(path, row_idx)}: missing prompt field '{prompt_field}'")
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{_where(path, row_idx)}: empty prompt in field '{prompt_field}'")
        return value
    return _check_messages(value, path, row_idx, prompt_field)


def _check_messages(value: Any, path: str, row_idx: int, field: str) -> List[dict]:
    if value is _MISSING or value is None:
        raise ValueError(f"{_where(path, row_idx)}: missing field '{field}'")
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{_where(path, row_idx)}: field '{field}' must be a string or a non-empty list of "
                         f"chat messages, got {type(value).__name__}")
    for i, msg in enumerate(value):
        if not isinstance(msg, Mapping) or not isinstance(msg.get("role"), str):
            raise ValueError(f"{_where(path, row_idx)}: message {i} of '{field}' needs a string 'role'")
    return [dict(msg) for msg in value]


def _prompt_part(messages: List[dict], path: str, row_idx: int) -> List[dict]:
    """The conversation up to the turn the student generates (trailing assistant turns dropped)."""
    end = len(messages)
    while end > 0 and messages[end - 1]["role"] == "assistant":
        end -= 1
    if end == 0:
        raise ValueError(f"{_where(path, row_idx)}: conversation holds only assistant messages")
    return messages[:end]


def _as_answer(value: Any) -> Optional[str]:
    if value is _MISSING or value is None:
        return None
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _check_same_prompt_kind(prompts: list, sources: list) -> None:
    # Arrow needs one type per column: all string prompts, or all message lists.
    kinds = {}
    for prompt, source in zip(prompts, sources):
        kinds.setdefault(isinstance(prompt, str), source)
    if len(kinds) > 1:
        raise ValueError(f"mixed prompt kinds: {kinds[True]} has string prompts, {kinds[False]} has chat "
                         f"message lists; use one kind per run")


# --------------------------------------------------------------------------------------------
# 2. Chat template
# --------------------------------------------------------------------------------------------


def build_prompt_messages(prompt: Union[str, Sequence[Mapping]], system_prompt: Optional[str] = None,
                          prompt_template: str = PROMPT_PLACEHOLDER) -> List[dict]:
    """Chat messages of one prompt.

    A string prompt becomes one user message, ``prompt_template`` with ``{prompt}`` replaced by the
    prompt. Only that placeholder is substituted (``str.replace``, not ``str.format``), so literal
    braces such as ``\\boxed{}`` need no escaping. A message list is used as is (the template is not
    applied to it; a warning says so once). ``system_prompt`` is prepended unless the messages
    already start with a system message.
    """
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt_template.replace(PROMPT_PLACEHOLDER, prompt)}]
    else:
        messages = [dict(m) for m in prompt]
        if prompt_template != PROMPT_PLACEHOLDER:
            _warn_once("template-on-list", "data.prompt_template applies to string prompts only; "
                       "prompts given as chat messages are used unchanged")
    if system_prompt is not None and (not messages or messages[0].get("role") != "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def chat_template_kwargs(tokenizer, enable_thinking: Optional[bool]) -> Dict[str, Any]:
    """Extra template variables: ``enable_thinking`` only when set and the template reads it."""
    if enable_thinking is None:
        return {}
    if "enable_thinking" in _template_text(tokenizer):
        return {"enable_thinking": enable_thinking}
    _warn_once("thinking", f"data.enable_thinking={enable_thinking} ignored: the tokenizer's chat "
               f"template does not reference 'enable_thinking'")
    return {}


def _template_text(tokenizer) -> str:
    try:
        return tokenizer.get_chat_template()
    except ValueError as err:
        raise ValueError(f"the tokenizer has no chat template (set tokenizer.chat_template): {err}") from err


def encode_chat(tokenizer, messages: Sequence[Mapping], add_generation_prompt: bool = True,
                enable_thinking: Optional[bool] = None) -> List[int]:
    """Token ids of ``messages`` rendered with the tokenizer's chat template."""
    out = tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=add_generation_prompt, tokenize=True,
        **chat_template_kwargs(tokenizer, enable_thinking),
    )
    return _as_id_list(out)


def _as_id_list(out: Any) -> List[int]:
    # transformers 5.x returns a BatchEncoding (return_dict=True by default); 4.x returned a list.
    if isinstance(out, Mapping):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], (list, tuple)):
        if len(out) != 1:
            raise ValueError(f"expected one tokenized conversation, got {len(out)}")
        out = out[0]
    return [int(t) for t in out]


# --------------------------------------------------------------------------------------------
# 3. Tokenized prompts and the sampler
# --------------------------------------------------------------------------------------------


class PromptDataset:
    """Chat-templated, length-filtered prompts; ``ds[i]`` is an item dict.

    Item: ``{"prompt_ids": list[int], "answer": str | None, "index": int, "source_file": str,
    "source_row": int}`` where ``index`` is the row of the loaded (unfiltered) dataset, a stable id
    for logs; multi-turn data adds ``"messages"`` (the whole conversation), and the dataset's other
    columns (``keep_fields`` of :func:`load_prompt_dataset`) are copied under their names.
    """

    def __init__(self, dataset, tokenizer, max_prompt_length: int, system_prompt: Optional[str] = None,
                 prompt_template: str = PROMPT_PLACEHOLDER, enable_thinking: Optional[bool] = None):
        if max_prompt_length <= 0:
            raise ValueError(f"max_prompt_length must be positive, got {max_prompt_length}")
        self.max_prompt_length = max_prompt_length
        self.files = sorted(set(dataset["source_file"])) if "source_file" in dataset.column_names else []
        prompt_ids = _encode_prompts(dataset, tokenizer, system_prompt, prompt_template, enable_thinking)
        answers = list(dataset["answer"]) if "answer" in dataset.column_names else [None] * len(prompt_ids)
        conversations = list(dataset["messages"]) if "messages" in dataset.column_names else None
        canonical = {"prompt", "answer", "messages"}
        extra = {c: list(dataset[c]) for c in dataset.column_names if c not in canonical}  # source_file/row, ...
        self.items: List[Dict[str, Any]] = []
        for index, ids in enumerate(prompt_ids):
            if len(ids) <= max_prompt_length:
                item = {"prompt_ids": ids, "answer": answers[index], "index": index}
                if conversations is not None:
                    item["messages"] = conversations[index]
                item.update({c: col[index] for c, col in extra.items()})
                self.items.append(item)
        self._report_filtering(len(prompt_ids), min(map(len, prompt_ids), default=0))

    @classmethod
    def from_files(cls, files: Union[str, Sequence[str]], tokenizer, max_prompt_length: int, *,
                   prompt_field: str = "prompt", answer_field: Optional[str] = "answer",
                   messages_field: Optional[str] = None, system_prompt: Optional[str] = None,
                   prompt_template: str = PROMPT_PLACEHOLDER, enable_thinking: Optional[bool] = None,
                   cache_dir: Optional[str] = None, keep_fields: Sequence[str] = ()) -> "PromptDataset":
        """Load (:func:`load_prompt_dataset`) and tokenize in one call; arguments = DataConfig fields."""
        dataset = load_prompt_dataset(files, prompt_field, answer_field, messages_field, cache_dir, keep_fields)
        return cls(dataset, tokenizer, max_prompt_length, system_prompt, prompt_template, enable_thinking)

    def _report_filtering(self, total: int, shortest: int) -> None:
        too_long = total - len(self.items)
        if not self.items:
            raise ValueError(
                f"no prompts left: all {total} prompts of {self.files} are longer than "
                f"max_prompt_length={self.max_prompt_length} tokens (shortest: {shortest}); "
                f"raise data.max_prompt_length"
            )
        if too_long:
            logger.warning("dropped %d of %d prompts longer than max_prompt_length=%d tokens",
                           too_long, total, self.max_prompt_length)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return self.items[i]

    def batch(self, indices: Sequence[int]) -> List[Dict[str, Any]]:
        """Items of the indices a :class:`PromptSampler` returned."""
        return [self.items[i] for i in indices]


def _encode_prompts(dataset, tokenizer, system_prompt: Optional[str], prompt_template: str,
                    enable_thinking: Optional[bool], chunk: int = 256) -> List[List[int]]:
    """Chat-templated ids of every prompt row, in order."""
    kwargs = chat_template_kwargs(tokenizer, enable_thinking)
    prompts = list(dataset["prompt"])
    ids: List[List[int]] = []
    for lo in range(0, len(prompts), chunk):
        conversations = [build_prompt_messages(p, system_prompt, prompt_template)
                         for p in prompts[lo:lo + chunk]]
        try:  # batched: the Rust tokenizer encodes a chunk much faster than row by row
            out = tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True,
                                                **kwargs)
            ids.extend(list(row) for row in out["input_ids"])  # python ints already
        except Exception:  # find and name the failing row
            for offset, conversation in enumerate(conversations):
                ids.append(_encode_one(dataset, lo + offset, tokenizer, conversation, enable_thinking))
    return ids


def _encode_one(dataset, row: int, tokenizer, conversation: List[dict],
                enable_thinking: Optional[bool]) -> List[int]:
    try:
        return encode_chat(tokenizer, conversation, enable_thinking=enable_thinking)
    except Exception as err:
        where = f"row {row}"
        if "source_file" in dataset.column_names:
            where = f"{dataset[row]['source_file']}, row {dataset[row]['source_row']}"
        raise ValueError(f"chat template failed on {where}: {type(err).__name__}: {err}") from err


class PromptSampler:
    """Deterministic, resumable batches of prompt indices for one rank.

    Epoch e visits a permutation of ``range(num_prompts)`` seeded by ``(seed, e)`` (identity when
    ``shuffle=False``), cut into global batches of ``prompts_per_step``; the incomplete tail of an
    epoch is dropped so every rank gets equal batches. Rank r takes the r-th contiguous shard of
    ``prompts_per_step // world_size`` prompts of each global batch. Iteration never ends (the
    trainer counts steps). ``state_dict()`` holds the global (epoch, position), identical on every
    rank; save it after a step's batch is consumed and a resumed run continues with the next one.
    """

    def __init__(self, num_prompts: int, prompts_per_step: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True):
        if prompts_per_step <= 0 or prompts_per_step % world_size:
            raise ValueError(f"prompts_per_step={prompts_per_step} must be a positive multiple of "
                             f"world_size={world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        if num_prompts < prompts_per_step:
            raise ValueError(f"{num_prompts} prompts are fewer than prompts_per_step={prompts_per_step}")
        self.num_prompts, self.prompts_per_step = num_prompts, prompts_per_step
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.position = 0, 0
        self._order: Optional[Tuple[int, np.ndarray]] = None  # (epoch, permutation) cache

    @property
    def steps_per_epoch(self) -> int:
        return self.num_prompts // self.prompts_per_step

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The global visiting order of one epoch."""
        if self._order is None or self._order[0] != epoch:
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.num_prompts)
            else:
                order = np.arange(self.num_prompts)
            self._order = (epoch, order)
        return self._order[1]

    def next_batch(self) -> List[int]:
        """This rank's indices of the next global batch; advances the state."""
        if self.position + self.prompts_per_step > self.num_prompts:
            self.epoch, self.position = self.epoch + 1, 0
        global_batch = self.epoch_order(self.epoch)[self.position:self.position + self.prompts_per_step]
        self.position += self.prompts_per_step
        shard = self.prompts_per_step // self.world_size
        return [int(i) for i in global_batch[self.rank * shard:(self.rank + 1) * shard]]

    def __iter__(self) -> Iterator[List[int]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> Dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_prompts": self.num_prompts, "shuffle": self.shuffle,
                "prompts_per_step": self.prompts_per_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore (epoch, position); refuses a state whose data order differs from this sampler's."""
        for key in ("seed", "num_prompts", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"cannot resume the data order: checkpoint has {key}={state[key]}, "
                                 f"this run has {key}={getattr(self, key)} (different data or seed)")
        if state.get("prompts_per_step", self.prompts_per_step) != self.prompts_per_step:
            logger.warning("resuming with prompts_per_step=%d (checkpoint: %d): same order, new batch cut",
                           self.prompts_per_step, state["prompts_per_step"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
