"""The agentic toy world's tokenizer (characters plus a few word pieces), with a tool-aware chat
template.

Built by :mod:`opsd.toy.tokenizer`'s builder, with ids of its own (the math world's stay as they
are). One token per character of ALPHABET (printable ASCII: JSON tool calls and the loop's error
texts fit), Qwen-style control tokens split off first, and PIECES: multi-character tokens for
the JSON glue of a tool call, the tool names and the role names, matched greedily before single
characters -- like a BPE vocabulary, where a call costs ~9 tokens instead of ~50 characters.
Why: at one token per character a gold episode was ~230 tokens of which a handful decide
anything, and a 3-layer teacher was still at ~2 % after 400 SFT steps (it learned the JSON, not
which entity to look up).

As with any BPE tokenizer, text has several id spellings: the ids ``a g e`` decode to ``age``,
which encodes back to the one piece ``age``. A model may sample either; the agent loop never
re-encodes what it sampled (tests/test_agent_toy.py checks the round trip).

Token ids (stable, the models depend on them)::

    0 <|endoftext|> pad   1 <|im_start|>   2 <|im_end|> eos   3 <think>   4 </think>   5 <unk>
    6 <tool_call>   7 </tool_call>   8 <tool_response>   9 </tool_response>
    10.. the characters of ALPHABET, in order, then the PIECES, in order

The four tool markers are single tokens, added as non-special tokens like Qwen3's (so
``decode(skip_special_tokens=True)`` keeps a call readable).

Chat template, the shape of Qwen3's tool template made compact for a character-level model:

- ``tools=`` -> a system turn listing one signature per tool, ``name(arg,arg)``, after the
  system message's content when there is one;
- an assistant turn is ``<|im_start|>assistant\\n{content}{tool calls}<|im_end|>\\n``; structured
  ``tool_calls`` render as ``<tool_call>{"name":..,"arguments":{..}}</tool_call>`` (compact JSON, as
  the models write them);
- consecutive ``tool`` messages merge into one user turn, each wrapped in
  ``<tool_response>...</tool_response>``, joined by a newline;
- the generation prompt is ``<|im_start|>assistant\\n``; ``enable_thinking=False`` appends an empty
  ``<think>\\n\\n</think>\\n\\n`` as in Qwen3 (the models are trained on both).

Assistant turns sit in ``{% generation %}`` so ``return_assistant_tokens_mask=True`` works.
"""
from __future__ import annotations

import string

from opsd.toy.tokenizer import EOS, GENERATION_PROMPT, ToyTokenizer  # noqa: F401 (EOS: the end of a turn)

TOOL_CALL, END_TOOL_CALL, TOOL_RESPONSE, END_TOOL_RESPONSE = (
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
TOOL_TOKENS = (TOOL_CALL, END_TOOL_CALL, TOOL_RESPONSE, END_TOOL_RESPONSE)
ALPHABET = "\n " + string.digits + string.ascii_lowercase + string.ascii_uppercase + string.punctuation
# Word pieces (ids after the characters). The tool names must match opsd.toy.agent_task.ATTRIBUTES.
PIECES = ('{"name":"', '","arguments":{"', '":"', '"}}', "who", "age", "height", "weight",
          "system", "user", "assistant", "tools", "Error")

CHAT_TEMPLATE = (
    "{%- set start = 1 if messages and messages[0]['role'] == 'system' else 0 %}"
    "{%- if tools or start %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if start %}{{- messages[0]['content'] }}{%- if tools %}{{- '\\n' }}{%- endif %}{%- endif %}"
    "{%- if tools %}"
    "{{- '# tools' }}"
    "{%- for tool in tools %}"
    "{%- set fn = tool['function'] if tool['function'] is defined else tool %}"
    "{%- set props = (fn['parameters'] or {}).get('properties', {}) if fn['parameters'] is defined else {} %}"
    "{{- '\\n' + fn['name'] + '(' + (props | list | join(',')) + ')' }}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages[start:] %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}"
    "{{- message['content'] or '' }}"
    "{%- for call in message['tool_calls'] or [] %}"
    "{%- set call = call['function'] if call['function'] is defined else call %}"
    "{{- '<tool_call>{\"name\":' + (call['name'] | tojson) + ',\"arguments\":' }}"
    "{%- if call['arguments'] is string %}{{- call['arguments'] }}"
    "{%- else %}{{- call['arguments'] | tojson(separators=(',', ':')) }}{%- endif %}"
    "{{- '}</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>' }}"
    "{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- set prev = messages[start:][loop.index0 - 1]['role'] if not loop.first else '' %}"
    "{%- if prev != 'tool' %}{{- '<|im_start|>user\\n' }}{%- else %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_response>' + message['content'] + '</tool_response>' }}"
    "{%- if loop.last or messages[start:][loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    + GENERATION_PROMPT
)


AGENT = ToyTokenizer(ALPHABET, CHAT_TEMPLATE, markers=TOOL_TOKENS, pieces=PIECES, model_max_length=1024)
vocab, padded_vocab_size = AGENT.vocab, AGENT.padded_vocab_size
build_tokenizer, save_tokenizer = AGENT.build, AGENT.save
