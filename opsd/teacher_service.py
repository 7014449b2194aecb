"""The teacher as a service: a frozen teacher in its own vLLM server, scored over HTTP.

Hidden-state mode (exact, the default): vLLM runs the teacher as a pooling model that returns the
last hidden state of every token (``token_embed`` task, ``ALL`` pooling, no activation: the state
after the final norm, what the LM head consumes). The trainer keeps only the teacher's LM head,
read from the same checkpoint, and recomputes full-vocabulary logits from the hidden states chunk
by chunk as for the in-process teacher (:class:`opsd.losses.HiddenLogits`): d_T numbers per token
on the wire instead of V. Top-k mode (``engine.teacher_server_output=topk``): vLLM's generate
runner returns the top-k prompt log-probabilities per position (:class:`opsd.losses.TeacherTopK`,
with its documented bias); nothing of the teacher is loaded locally.

Start the server (in the vLLM environment; prints the URL once it answers)::

    python -m opsd.teacher_service serve --model artifacts/toy/teacher --port 8100 [--output topk]

The wrapper serves the checkpoint under a second name that fingerprints it (architecture, hidden
size, vocabulary, SHA-256 of the head matrix); at connect time the client compares that with the
local checkpoint and sends a probe whose hidden width must be the head's: a mismatch is one error
naming both. Requests: one per micro-batch, all of a step's sent at once (``score_phase``
returns pending sources that block on first use, so the student trains on micro-batch i while
later ones are scored: ``teacher/wait_s`` is the time blocked, ``teacher/score_s`` the requests'
own time). Hidden states come back as a binary body (``encoding_format=bytes``), read streamed.
A failed request (connection refused, timeout, HTTP error, bad shape or NaN, truncated body) is
retried ``engine.teacher_retries`` times with doubling backoff, then :class:`TeacherServiceError`
names the URL and the step.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

import torch

from opsd.losses import HiddenLogits, TeacherTopK
from opsd.rollout.base import RolloutEngineError

log = logging.getLogger("opsd")
logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request

FINGERPRINT_PREFIX = "opsd-teacher:"
_WIRE_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class TeacherServiceError(RolloutEngineError):
    """The teacher service failed after its retries (down, timing out, HTTP errors, garbage).
    A :class:`~opsd.rollout.base.RolloutEngineError`, so the trainer stops the step without saving
    and names the checkpoint to resume from, as for a dead rollout engine."""

    what = "the teacher service failed"  # the trainer's wording for this failure


# ------------------------------------------------------------------ the checkpoint's head


def _checkpoint_files(model_dir: str) -> dict:
    """``{tensor name: safetensors file}`` of a local checkpoint folder (sharded or not)."""
    d = Path(model_dir)
    index = d / "model.safetensors.index.json"
    if index.is_file():
        return {k: str(d / f) for k, f in json.loads(index.read_text())["weight_map"].items()}
    single = d / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"{model_dir}: no model.safetensors(.index.json); the served teacher's head is "
                                "read from a safetensors checkpoint")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        return {k: str(single) for k in f.keys()}


def _head_names(model_dir: str) -> tuple:
    """Checkpoint names of the LM head's weight (and bias, or None), from a model built on the
    meta device (no memory): every name the head's parameter has (tied: the input embedding's)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    names = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
    bias = getattr(head, "bias", None)
    return names[id(head.weight)], (names[id(bias)] if bias is not None else None), config


def load_head(model_dir: str, dtype: Optional[torch.dtype] = None) -> tuple:
    """``(weight (V, d_T), bias (V,) or None, sha256 of the weight's stored bytes, config)``: only
    the head's tensors are read from the checkpoint."""
    from safetensors import safe_open

    w_names, b_names, config = _head_names(model_dir)
    files = _checkpoint_files(model_dir)

    def read(names):
        for n in names:
            if n in files:
                with safe_open(files[n], framework="pt") as f:
                    return f.get_tensor(n)
        raise FileNotFoundError(f"{model_dir}: the LM head ({' or '.join(names)}) is not in the checkpoint")

    weight = read(w_names)
    digest = hashlib.sha256(weight.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
    bias = read(b_names) if b_names else None
    if dtype is not None:
        weight = weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    return weight, bias, digest, config


def fingerprint(config, head_sha: str, dtype: str) -> dict:
    """What identifies a served teacher: architecture, hidden size, vocabulary, the head's hash
    and the dtype it computes in (vLLM's ``auto`` would run a float32 checkpoint in float16)."""
    return {"architecture": (config.architectures or ["?"])[0], "hidden_size": int(config.hidden_size),
            "vocab_size": int(config.vocab_size), "head_sha256": head_sha[:16], "dtype": dtype}


def fingerprint_name(fp: dict) -> str:
    return (f"{FINGERPRINT_PREFIX}{fp['architecture']}:h{fp['hidden_size']}:v{fp['vocab_size']}:"
            f"{fp['head_sha256']}:{fp['dtype']}")


def parse_fingerprint(name: str) -> dict:
    arch, h, v, sha, dtype = name[len(FINGERPRINT_PREFIX):].split(":")
    return {"architecture": arch, "hidden_size": int(h[1:]), "vocab_size": int(v[1:]), "head_sha256": sha,
            "dtype": dtype}


def checkpoint_dtype(config) -> str:
    """The dtype the checkpoint's config names (float32 if none): what ``from_pretrained`` loads."""
    d = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return str(d).replace("torch.", "")


# ------------------------------------------------------------------ the server wrapper


def serve_command(model: str, host: str, port: int, output: str, dtype: Optional[str], max_model_len: Optional[int],
                  max_logprobs: int, extra: List[str]) -> list:
    """The vLLM api_server command line for ``output`` = hidden (pooling runner, per-token last
    hidden states after the final norm) or topk (generate runner, prompt log-probabilities);
    ``dtype`` None: the checkpoint's."""
    _, _, sha, config = load_head(model)
    dtype = dtype or checkpoint_dtype(config)
    name = fingerprint_name(fingerprint(config, sha, dtype))
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", host,
           "--port", str(port), "--dtype", dtype, "--served-model-name", name, os.path.basename(model.rstrip("/"))]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if output == "hidden":
        cmd += ["--runner", "pooling", "--convert", "embed", "--pooler-config",
                json.dumps({"task": "token_embed", "pooling_type": "ALL", "use_activation": False})]
    else:
        cmd += ["--runner", "generate", "--max-logprobs", str(max_logprobs)]
    return cmd + list(extra)


def _serve(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m opsd.teacher_service serve",
                                description="Serve a teacher checkpoint with vLLM for engine.teacher_placement=server.")
    p.add_argument("--model", required=True, help="teacher checkpoint folder (the trainer's model.teacher)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--output", choices=["hidden", "topk"], default="hidden",
                   help="hidden: last hidden states (exact); topk: prompt log-probabilities")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16: the trainer's model.dtype "
                                                 "(default: the checkpoint's)")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-logprobs", type=int, default=64, help="topk: the largest k a request may ask for")
    args, extra = p.parse_known_args(argv)
    cmd = serve_command(args.model, args.host, args.port, args.output, args.dtype, args.max_model_len,
                        args.max_logprobs, extra)
    print(f"teacher service: http://{args.host}:{args.port} (train with engine.teacher_placement=server "
          f"engine.teacher_url=http://{args.host}:{args.port} engine.teacher_server_output={args.output})",
          flush=True)
    print("exec:", " ".join(cmd), flush=True)
    os.execv(cmd[0], cmd)  # the server is this process: stopping it stops vLLM


# ------------------------------------------------------------------ the client


def sequences(batch: dict) -> list:
    """``[(token ids, loss positions (bool, one per token))]`` of a collated micro-batch
    (:func:`opsd.batching.collate`): padded rows cut to their attention mask, packed rows split
    where ``position_ids`` restart at 0. The concatenated loss positions are the micro-batch's
    ``loss_mask`` in row-major order, the order of the in-process teacher's hidden states."""
    ids, lm = batch["input_ids"], batch["loss_mask"].bool()
    if not batch["rows"]:
        return []
    if batch["attention_mask"] is not None:
        am = batch["attention_mask"].bool()
        return [(ids[r][am[r]].tolist(), lm[r][am[r]]) for r in range(ids.shape[0])]
    pos = batch["position_ids"][0]
    starts = (pos == 0).nonzero().flatten().tolist() + [pos.numel()]
    return [(ids[0, s:e].tolist(), lm[0, s:e]) for s, e in zip(starts[:-1], starts[1:])]


class _Pending:
    """A micro-batch's logit source still being scored: ``len`` is known (its loss positions);
    the first ``rows`` blocks until the response is in (counted in ``teacher/wait_s``)."""

    def __init__(self, future, n: int, owner: "ServedTeacher"):
        self._future, self._n, self._owner, self._src = future, n, owner, None

    def __len__(self) -> int:
        return self._n

    def resolve(self):
        if self._src is None:
            t = time.time()
            self._src = self._future.result()
            self._owner.wait_s += time.time() - t
        return self._src

    def rows(self, idx) -> torch.Tensor:
        return self.resolve().rows(idx)


class _PendingTopK(_Pending, TeacherTopK):
    """:class:`_Pending` for top-k sources (the losses branch on ``TeacherTopK`` and read its fields)."""

    @property
    def logprobs(self):
        return self.resolve().logprobs

    @property
    def indices(self):
        return self.resolve().indices


class ServedTeacher:
    """The teacher interface of :mod:`opsd.teacher` over a vLLM teacher service."""

    def __init__(self, url: str, device: torch.device, output: str = "hidden", head=None, topk: Optional[int] = None,
                 expect: Optional[dict] = None, timeout_s: float = 120.0, retries: int = 3, backoff_s: float = 1.0,
                 concurrency: int = 4, width: Optional[int] = None):
        import httpx

        self.url, self.device, self.output, self.topk = url.rstrip("/"), device, output, topk
        self.head_weight, self.head_bias = (head or (None, None))
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
                                   limits=httpx.Limits(max_connections=concurrency))
        self.pool = cf.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="teacher")
        self.step = 0  # score_phase calls of this process (named in errors only with the trainer's step)
        self.wait_s = self.score_s = 0.0
        self.bytes_in = self.tokens = 0
        self._lock = threading.Lock()  # the counters above, updated from the request threads
        self.model_name = None
        self.fp = self.connect(expect)
        self.bytes_in = 0  # the probe is not a step's traffic
        self.width = width if width is not None else (self.head_weight.shape[0] if output == "hidden"
                                                      else self.fp["vocab_size"])

    # -- connect-time verification

    def connect(self, expect: Optional[dict]) -> dict:
        """The served model's fingerprint, checked against ``expect`` (the local checkpoint's) and
        against a probe's hidden width; any mismatch is one error naming both."""
        listing = self._request("GET", "/v1/models", what="the model list").json()
        names = [m.get("id", "") for m in listing.get("data", [])]
        fps = [n for n in names if n.startswith(FINGERPRINT_PREFIX)]
        if not fps:
            raise ValueError(f"the teacher service at {self.url} serves {names}, without the checkpoint fingerprint "
                             "that `python -m opsd.teacher_service serve --model DIR` adds: start it with that command")
        self.model_name = fps[0]
        fp = parse_fingerprint(fps[0])
        if expect is not None and any(fp[k] != v for k, v in expect.items()):
            diff = ", ".join(f"{k} {fp[k]!r} vs {v!r}" for k, v in expect.items() if fp[k] != v)
            raise ValueError(f"the teacher service at {self.url} serves another model than model.teacher: served "
                             f"{fp} vs local checkpoint {expect} (differ: {diff})")
        self.fp = fp
        probe = [[0, 1, 2, 3]]
        if self.output == "hidden":
            h = self._hidden(probe)[0]
            want = self.head_weight.shape[1]
            if h.shape != (4, want):
                raise ValueError(f"the teacher service at {self.url} returned hidden states of shape {tuple(h.shape)} "
                                 f"for a 4-token probe; the local head of model.teacher takes {want} features")
        else:
            self._topk([(probe[0], torch.ones(4, dtype=torch.bool))])
        return fp

    # -- HTTP with retries

    def _request(self, method: str, path: str, what: str, check=None, **kw):
        """``method path`` with ``engine.teacher_retries`` retries (backoff doubling); ``check(resp)``
        parses and validates the body (raising ValueError on garbage), its result is returned."""
        import httpx

        errors = []
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                with self.client.stream(method, path, **kw) as resp:
                    body = resp.read()  # streamed in chunks; a truncated body raises here
                    if resp.status_code >= 400:
                        raise ValueError(f"HTTP {resp.status_code}: {body[:200].decode(errors='replace')}")
                    return check(resp, body) if check else _Body(resp, body)
            except (httpx.HTTPError, ValueError, KeyError, RuntimeError) as e:
                errors.append(f"{type(e).__name__}: {e}")
                log.warning("teacher service %s%s: %s failed (try %d of %d): %s", self.url, path, what, attempt + 1,
                            self.retries + 1, errors[-1])
        raise TeacherServiceError(f"the teacher service at {self.url} failed on {what} after {self.retries + 1} "
                                  f"tries (engine.teacher_retries={self.retries}); last error: {errors[-1]}")

    def _hidden(self, seqs: List[List[int]]) -> List[torch.Tensor]:
        """Last hidden states ``(len, d_T)`` of each token sequence (one request)."""
        dtype = self.head_weight.dtype if self.head_weight is not None else torch.float32
        wire = _WIRE_DTYPES.get(dtype, "float32")
        payload = {"model": self.model_name, "input": seqs, "task": "token_embed", "encoding_format": "bytes",
                   "embed_dtype": wire, "endianness": "little"}

        def check(resp, body):
            meta = json.loads(resp.headers["metadata"])["data"]
            if len(meta) != len(seqs):
                raise ValueError(f"{len(meta)} outputs for {len(seqs)} inputs")
            out = []
            for item, s in zip(sorted(meta, key=lambda m: m["index"]), seqs):
                shape = tuple(item["shape"])
                if shape[0] != len(s) or item["end"] > len(body):
                    raise ValueError(f"output {item['index']} has shape {shape} (bytes {item['start']}:{item['end']} "
                                     f"of {len(body)}) for {len(s)} tokens")
                t = torch.frombuffer(bytearray(body[item["start"]:item["end"]]), dtype=getattr(torch, wire))
                t = t.reshape(shape)
                if not torch.isfinite(t).all():
                    raise ValueError(f"output {item['index']} holds non-finite values")
                out.append(t)
            with self._lock:
                self.bytes_in += len(body)
            return out

        return self._request("POST", "/pooling", f"scoring {len(seqs)} sequences" + self._at(), check, json=payload)

    def _topk(self, seqs: list) -> TeacherTopK:
        """Top-k log-probabilities at the loss positions of ``seqs`` ((ids, loss positions)). vLLM's
        prompt log-probability j is that of token j given the tokens before it, so position p's
        distribution is entry p + 1: one extra token (id 0) is appended for the last position.
        Ids past the trained vocabulary (padding rows of the head, >= ``vocab_size``) are dropped:
        ``width - vocab_size`` more entries are asked for so that k remain (the log-probabilities
        stay normalized over the full width: part of top-k mode's bias)."""
        k, vocab = self.topk, getattr(self, "_vocab_size", None) or self.fp["vocab_size"]
        ask = k + max(self.fp["vocab_size"] - vocab, 0)
        payload = {"model": self.model_name, "prompt": [ids + [0] for ids, _ in seqs], "max_tokens": 1,
                   "prompt_logprobs": ask, "temperature": 0.0}

        def check(resp, body):
            choices = sorted(json.loads(body)["choices"], key=lambda c: c["index"])
            if len(choices) != len(seqs):
                raise ValueError(f"{len(choices)} choices for {len(seqs)} prompts")
            vals, idxs = [], []
            for c, (ids, lm) in zip(choices, seqs):
                plp = c["prompt_logprobs"]
                if len(plp) != len(ids) + 1:
                    raise ValueError(f"{len(plp)} prompt log-probabilities for {len(ids) + 1} tokens")
                for p in lm.nonzero().flatten().tolist():
                    top = sorted(((float(v["logprob"]), int(t)) for t, v in plp[p + 1].items() if int(t) < vocab),
                                 reverse=True)[:k]
                    if len(top) < k or not all(v == v and v != float("inf") for v, _ in top):
                        raise ValueError(f"position {p + 1}: {len(top)} log-probabilities for k={k}, or not finite")
                    vals.append([v for v, _ in top])
                    idxs.append([t for _, t in top])
            with self._lock:
                self.bytes_in += len(body)
            return TeacherTopK(torch.tensor(vals, dtype=torch.float32).reshape(-1, k),
                               torch.tensor(idxs, dtype=torch.long).reshape(-1, k))

        return self._request("POST", "/v1/completions", f"top-{k} log-probs of {len(seqs)} sequences" + self._at(),
                             check, json=payload)

    def _at(self) -> str:
        return f" (score_phase {self.step} of this process)"

    # -- the teacher interface

    def prepare(self, packing: bool) -> None:
        log.info("teacher: served at %s (%s, output=%s)", self.url, self.model_name, self.output)

    def _score(self, seqs: list):
        t = time.time()
        try:
            if self.output == "topk":
                return self._topk(seqs)
            hidden = self._hidden([ids for ids, _ in seqs])
            h = torch.cat([hs[lm] for hs, (_, lm) in zip(hidden, seqs)]).to(self.device)
            return HiddenLogits(h, self.head_weight, self._vocab_size, self.head_bias)
        finally:
            with self._lock:
                self.score_s += time.time() - t

    def score_phase(self, batches: list, vocab_size: int, meta=None) -> list:
        """Every micro-batch's request is sent now; each source blocks on first use."""
        self.step += 1
        self._vocab_size = vocab_size
        out = []
        for b in batches:
            seqs = sequences(b)
            n = int(sum(int(lm.sum()) for _, lm in seqs))
            self.tokens += sum(len(ids) for ids, _ in seqs)
            empty = (TeacherTopK(torch.zeros(0, self.topk), torch.zeros(0, self.topk, dtype=torch.long))
                     if self.output == "topk" else
                     HiddenLogits(self.head_weight.new_zeros(0, self.head_weight.shape[1]), self.head_weight,
                                  vocab_size, self.head_bias))
            if n == 0:
                out.append(empty)
                continue
            fut = self.pool.submit(self._score, seqs)
            out.append(_PendingTopK(fut, n, self) if self.output == "topk" else _Pending(fut, n, self))
        return out

    def after_update(self) -> None:
        pass

    def metrics(self) -> dict:
        """Per step: seconds blocked on the service, seconds its requests took (overlapping the
        student's work), bytes received and tokens sent."""
        with self._lock:
            m = {"teacher/wait_s": self.wait_s, "teacher/score_s": self.score_s,
                 "teacher/bytes": float(self.bytes_in), "teacher/tokens": float(self.tokens)}
            self.wait_s = self.score_s = 0.0
            self.bytes_in = self.tokens = 0
        return m

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()


class _Body:
    def __init__(self, resp, body: bytes):
        self.resp, self.body = resp, body

    def json(self):
        return json.loads(self.body)


def build_served_teacher(cfg, device: torch.device, tokenizer) -> ServedTeacher:
    """The served teacher of ``cfg.engine`` (teacher_placement=server). Hidden mode: the head of
    ``model.teacher`` is loaded here (in ``model.dtype``) and the service must serve that checkpoint."""
    from opsd import models

    e, m = cfg.engine, cfg.model
    models.check_same_tokenizer(tokenizer, m.teacher, m.trust_remote_code)
    kw = dict(timeout_s=e.teacher_timeout_s, retries=e.teacher_retries, backoff_s=e.teacher_backoff_s,
              concurrency=e.teacher_concurrency)
    if e.teacher_server_output == "topk":  # the head need not be here; the config is checked if it is
        config = Path(m.teacher) / "config.json"
        expect = None
        if config.is_file():
            import transformers

            c = transformers.AutoConfig.from_pretrained(m.teacher)
            expect = {k: v for k, v in fingerprint(c, "", m.dtype).items() if k != "head_sha256"}
        return ServedTeacher(e.teacher_url, device, "topk", topk=cfg.loss.teacher_topk, expect=expect, **kw)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(m.dtype)
    weight, bias, sha, config = load_head(m.teacher, dtype)
    head = (weight.to(device), None if bias is None else bias.to(device))
    expect = fingerprint(config, sha, m.dtype or checkpoint_dtype(config))
    teacher = ServedTeacher(e.teacher_url, device, "hidden", head=head, expect=expect, **kw)
    if cfg.loss.teacher_topk:  # top-k of the exact logits, as the in-process teacher's loss.teacher_topk
        return _LocalTopK(teacher, cfg.loss.teacher_topk, cfg.loss.chunk_size)
    return teacher


class _LocalTopK:
    """Hidden-state service + ``loss.teacher_topk``: the top-k of the exact logits, computed here."""

    def __init__(self, inner: ServedTeacher, k: int, chunk_size: int):
        self.inner, self.k, self.chunk_size = inner, k, chunk_size
        self.width = inner.width

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def score_phase(self, batches, vocab_size, meta=None):
        return [TeacherTopK.from_logits(s, self.k, self.chunk_size)
                for s in self.inner.score_phase(batches, vocab_size, meta)]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "serve":
        print("usage: python -m opsd.teacher_service serve --model DIR [--port N] [--output hidden|topk] "
              "[vLLM options]", file=sys.stderr)
        return 2
    return _serve(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
