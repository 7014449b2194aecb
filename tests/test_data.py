"""Tests of opsd.data: loading and its errors, prompt tokenization, the sampler, loss masks."""
import json
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import BatchEncoding  # noqa: E402

from opsd import data  # noqa: E402
from opsd.batching import build_sequences, pad_batch  # noqa: E402
from opsd.data import PromptDataset, PromptSampler, build_prompt_messages, encode_chat, load_prompt_dataset  # noqa: E402

from _multiturn import build_multiturn_sample  # noqa: E402

from _tiny_tokenizer import NOT_PREFIX_STABLE_TEMPLATE, PLAIN_TEMPLATE, build_tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(autouse=True)
def _fresh_warnings():
    data._warned.clear()  # warn-once state is per process; each test sees its own first warning


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def load(files, tmp_path, **kw):
    return load_prompt_dataset(files, cache_dir=str(tmp_path / "hf_cache"), **kw)


# ------------------------------------------------------------------------------------ loading


def test_jsonl_loading_stringifies_answers(tmp_path):
    rows = [{"prompt": "1+1?", "answer": 2}, {"prompt": "2+2?", "answer": "4"}]
    f = write_jsonl(tmp_path / "a.jsonl", rows)
    ds = load([f], tmp_path)
    assert ds["prompt"][:] == ["1+1?", "2+2?"]
    assert ds["answer"][:] == ["2", "4"]
    assert ds["source_row"][:] == [0, 1]


def test_parquet_with_message_prompts_and_nested_answer(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "q0"}], "reward_model": {"ground_truth": "7"}},
            {"prompt": [{"role": "user", "content": "q1"}], "reward_model": {"ground_truth": "8"}}]
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    ds = load(str(tmp_path), tmp_path, answer_field="reward_model.ground_truth")  # a folder works too
    assert ds[1]["prompt"] == [{"role": "user", "content": "q1"}]
    assert ds["answer"][:] == ["7", "8"]


def test_missing_answer_column_gives_none(tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "x"}])
    assert load([f], tmp_path)["answer"][:] == [None]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load([str(tmp_path / "nope.jsonl")], tmp_path)


def test_unsupported_extension(tmp_path):
    (tmp_path / "a.csv").write_text("prompt\nx\n")
    with pytest.raises(ValueError, match=r"a\.csv.*\.jsonl"):
        load([str(tmp_path / "a.csv")], tmp_path)


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c"\n{"prompt": "d"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 3"):
        load([str(path)], tmp_path)


def test_missing_prompt_names_file_row_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n{"question": "c"}\n')  # blank line 2
    with pytest.raises(ValueError, match=r"rows\.jsonl, row 2 \(line 4\): missing prompt field 'prompt'"):
        load([str(path)], tmp_path)


def test_missing_prompt_column_lists_columns(tmp_path):
    f = write_jsonl(tmp_path / "q.jsonl", [{"question": "a"}])
    with pytest.raises(ValueError, match=r"q\.jsonl: no column 'prompt'.*question"):
        load([f], tmp_path)


# ------------------------------------------------------------------------------ tokenization


def test_length_filter_drops_and_warns(tmp_path, tok, caplog):
    f = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "hi"}, {"prompt": "x" * 100}, {"prompt": "yo"}])
    with caplog.at_level(logging.WARNING, logger="opsd.data"):
        ds = PromptDataset(load([f], tmp_path), tok, max_prompt_length=40)
    assert [item["index"] for item in ds] == [0, 2]
    assert "dropped 1 of 3 prompts" in caplog.text
    assert ds[0]["prompt_ids"] == encode_chat(tok, [{"role": "user", "content": "hi"}])
    assert ds[0]["answer"] is None


def test_all_filtered_error_names_files_and_limit(tmp_path, tok):
    f = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "x" * 100}])
    with pytest.raises(ValueError, match=r"long\.jsonl.*max_prompt_length=10"):
        PromptDataset(load([f], tmp_path), tok, max_prompt_length=10)


def test_thinking_switch_changes_the_prompt(tok):
    msgs = [{"role": "user", "content": "q"}]
    off = tok.decode(encode_chat(tok, msgs, enable_thinking=False))
    on = tok.decode(encode_chat(tok, msgs, enable_thinking=True))
    default = tok.decode(encode_chat(tok, msgs))
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert on == default and on.endswith("<|im_start|>assistant\n")


def test_thinking_switch_warns_once_when_template_ignores_it(caplog):
    plain = build_tiny_tokenizer(PLAIN_TEMPLATE)
    msgs = [{"role": "user", "content": "q"}]
    with caplog.at_level(logging.WARNING, logger="opsd.data"):
        ids = [encode_chat(plain, msgs, enable_thinking=False) for _ in range(3)]
    assert ids[0] == encode_chat(plain, msgs)
    assert len([r for r in caplog.records if "enable_thinking" in r.getMessage()]) == 1


def test_prompt_template_and_system_prompt():
    msgs = build_prompt_messages("2+2?", system_prompt="Be brief.",
                                 prompt_template="{prompt} Put it in \\boxed{}.")
    assert msgs == [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "2+2? Put it in \\boxed{}."}]
    given = [{"role": "system", "content": "own"}, {"role": "user", "content": "q"}]
    assert build_prompt_messages(given, system_prompt="Be brief.") == given  # keeps the data's system turn


def test_id_list_from_every_return_shape():
    ids = [3, 4, 5]
    for out in (ids, [ids], torch.tensor([ids]), BatchEncoding({"input_ids": ids})):
        assert data._as_id_list(out) == ids


# ------------------------------------------------------------------------------- loss masks


def test_loss_mask_convention_hand_made():
    pad, eos = 0, 9
    batch = build_sequences([[1, 2, 3], [4]], [[5, 6, eos], [7, eos, pad, pad]], pad_id=pad, eos_id=eos)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 5, 6, 9], [4, 7, 9, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]
    # logits position p predicts token p+1: the response 5,6,9 sits at 3..5, so loss at 2..4
    assert batch["loss_mask"].int().tolist() == [[0, 0, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]]
    assert batch["target_ids"][batch["loss_mask"]].tolist() == [5, 6, 9, 7, 9]
    assert batch["response_lengths"].tolist() == [3, 2]
    assert batch["num_empty_responses"] == 0


def test_empty_or_all_padding_response_gets_no_loss():
    batch = build_sequences([[1, 2], [1, 2], [1]], [[], [0, 0, 0], [5]], pad_id=0, eos_id=9)
    assert batch["loss_mask"].sum(dim=1).tolist() == [0, 0, 1]
    assert batch["num_empty_responses"] == 2


def test_text_after_eos_is_cut_and_pad_equal_eos_keeps_lone_eos():
    batch = build_sequences([[1]], [[5, 9, 6, 7]], pad_id=0, eos_id=9)
    assert batch["target_ids"][batch["loss_mask"]].tolist() == [5, 9]
    batch = build_sequences([[1]], [[9, 9, 9]], pad_id=9, eos_id=9)  # "stop at once" is a response
    assert batch["response_lengths"].tolist() == [1] and batch["num_empty_responses"] == 0


# ------------------------------------------------------------------------------ multi-turn

CONVERSATION = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "yo"},
    {"role": "tool", "content": "T"},
    {"role": "user", "content": "more"},
    {"role": "assistant", "content": "ok!"},
]


def trained_text(tok, ids, mask):
    # the tokens the masked logits positions predict
    return tok.decode([ids[p + 1] for p in range(len(ids)) if mask[p]])


@pytest.mark.parametrize("thinking", [None, False])
def test_multiturn_mask_covers_exactly_the_assistant_tokens(tok, thinking):
    ids, mask = build_multiturn_sample(tok, CONVERSATION, enable_thinking=thinking)
    assert ids == encode_chat(tok, CONVERSATION, add_generation_prompt=False)
    assert len(mask) == len(ids) and mask[-1] == 0
    assert trained_text(tok, ids, mask) == "yo<|im_end|>ok!<|im_end|>"
    # each span starts right after the assistant header
    first = mask.index(1)
    assert tok.decode(ids[:first + 1]).endswith("<|im_start|>assistant\n")


def test_multiturn_batches_with_pad_batch(tok):
    samples = [build_multiturn_sample(tok, CONVERSATION), build_multiturn_sample(tok, CONVERSATION[:3])]
    batch = pad_batch([s[0] for s in samples], [s[1] for s in samples], pad_id=tok.pad_token_id)
    assert batch["loss_mask"].shape == batch["input_ids"].shape
    assert tok.decode(batch["target_ids"][1][batch["loss_mask"][1]].tolist()) == "yo<|im_end|>"


def test_multiturn_rejects_template_that_is_not_prefix_stable():
    bad = build_tiny_tokenizer(NOT_PREFIX_STABLE_TEMPLATE)
    with pytest.raises(ValueError, match="not prefix-stable at message 2"):
        build_multiturn_sample(bad, CONVERSATION)


def test_messages_field_prompt_stops_before_last_assistant_turn(tmp_path, tok):
    f = write_jsonl(tmp_path / "chat.jsonl", [{"conv": CONVERSATION}])
    ds = PromptDataset(load([f], tmp_path, messages_field="conv"), tok, max_prompt_length=500)
    prompt = tok.decode(ds[0]["prompt_ids"])
    assert prompt.endswith("more<|im_end|>\n<|im_start|>assistant\n") and "ok!" not in prompt
    assert [m["content"] for m in ds[0]["messages"]] == [m["content"] for m in CONVERSATION]


# -------------------------------------------------------------------------------- sampler


def take(sampler, n):
    return [sampler.next_batch() for _ in range(n)]


def test_sampler_is_deterministic_and_covers_each_epoch_once():
    a, b = PromptSampler(10, 4, seed=3), PromptSampler(10, 4, seed=3)
    assert take(a, 6) == take(b, 6)
    assert take(PromptSampler(10, 4, seed=3), 2) != take(PromptSampler(10, 4, seed=4), 2)
    epoch = sum(take(PromptSampler(12, 4, seed=0), 3), [])
    assert sorted(epoch) == list(range(12))
    assert take(PromptSampler(8, 4, shuffle=False), 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_sampler_resumes_from_state_dict_across_epochs():
    run = PromptSampler(10, 4, seed=1)
    take(run, 3)  # crosses the epoch boundary (2 steps per epoch, tail of 2 dropped)
    state = run.state_dict()
    expected = take(run, 5)
    resumed = PromptSampler(10, 4, seed=1)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # survives a JSON checkpoint
    assert take(resumed, 5) == expected
    with pytest.raises(ValueError, match="seed"):
        PromptSampler(10, 4, seed=2).load_state_dict(state)


def test_rank_shards_cover_the_global_batch_exactly_once():
    world = 4
    single = take(PromptSampler(40, 8, seed=5), 7)
    ranks = [take(PromptSampler(40, 8, rank=r, world_size=world, seed=5), 7) for r in range(world)]
    for step, global_batch in enumerate(single):
        shards = [ranks[r][step] for r in range(world)]
        assert all(len(s) == 2 for s in shards)
        assert sum(shards, []) == global_batch  # contiguous, in rank order, no overlap


def test_resume_at_another_world_size_sees_the_same_global_batches():
    run = PromptSampler(40, 8, seed=5)
    take(run, 3)
    expected = take(PromptSampler(40, 8, seed=5), 4)[3]
    shards = []
    for r in range(2):
        s = PromptSampler(40, 8, rank=r, world_size=2, seed=5)
        s.load_state_dict(run.state_dict())
        shards += s.next_batch()
    assert shards == expected


def test_sampler_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiple of world_size"):
        PromptSampler(10, 3, world_size=2)
    with pytest.raises(ValueError, match="fewer than prompts_per_step"):
        PromptSampler(3, 4)
