"""Drives the LLM proxy with the official OpenAI Python SDK, unchanged but for the base URL and
the internal-auth header, the way a user of the proxy would. Exits non-zero on any mismatch."""

import json
import sys

import openai

base_url, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key="unused", default_headers={"X-Internal-Auth": key})

# Non-streamed text.
reply = client.chat.completions.create(model="mock-llm", messages=[{"role": "user", "content": "hello"}])
assert reply.choices[0].message.content == "Mock LLM response (static)", reply
assert reply.choices[0].finish_reason == "stop", reply
assert reply.usage.total_tokens == 5, reply.usage

# Streamed text with usage.
pieces, finish, usage = [], None, None
for chunk in client.chat.completions.create(
    model="mock-llm",
    messages=[{"role": "user", "content": "hello"}],
    stream=True,
    stream_options={"include_usage": True},
):
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
assert pieces == ["Mock ", "LLM ", "response ", "(static)"], pieces
assert finish == "stop", finish
assert usage is not None and usage.completion_tokens == 4, usage

# Tool calls, both ways.
tools = [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}]
text = 'read both\n::tool read_file {"path": "a.py"}\n::tool read_file {"path": "b.py"}'
reply = client.chat.completions.create(model="mock-llm", messages=[{"role": "user", "content": text}], tools=tools)
calls = reply.choices[0].message.tool_calls
assert [json.loads(c.function.arguments) for c in calls] == [{"path": "a.py"}, {"path": "b.py"}], calls
assert reply.choices[0].finish_reason == "tool_calls"

streamed = {}
for chunk in client.chat.completions.create(
    model="mock-llm", messages=[{"role": "user", "content": text}], tools=tools, stream=True
):
    for choice in chunk.choices:
        for call in choice.delta.tool_calls or []:
            entry = streamed.setdefault(call.index, {"id": None, "name": None, "arguments": ""})
            if call.id:
                entry["id"] = call.id
            if call.function and call.function.name:
                entry["name"] = call.function.name
            if call.function and call.function.arguments:
                entry["arguments"] += call.function.arguments
assert [json.loads(streamed[i]["arguments"]) for i in sorted(streamed)] == [{"path": "a.py"}, {"path": "b.py"}], streamed
assert all(e["id"] and e["name"] == "read_file" for e in streamed.values()), streamed

# Errors surface as the SDK's typed exceptions.
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise SystemExit("expected a 400")
except openai.BadRequestError as error:
    assert error.status_code == 400 and "does not exist" in str(error), error
try:
    openai.OpenAI(base_url=base_url, api_key="unused").models.list()
    raise SystemExit("expected a 401")
except openai.AuthenticationError as error:
    assert error.status_code == 401

print("openai sdk ok")
