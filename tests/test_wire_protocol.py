"""Issue 19: the server's wire protocol is one declared schema (engine.stream.protocol), strict, with size and
depth limits checked before parsing, refusals that name the field (message and close reason), and an idle
timeout that frees a started session's slot. The server tests use a real `engine serve` server on loopback
(test_stream_server's fixture: the micro model, a prepared avatar) and a real websockets client."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time

import pytest

from engine.errors import InvalidInputError
from engine.stream.protocol import MAX_TEXT_BYTES, ProtocolError, parse_control, parse_start

pytest.importorskip("websockets")

from test_stream_server import _connect, _start, running, speech  # noqa: E402,F401 - fixtures

START = {"type": "start", "source": "demo1"}


@pytest.mark.parametrize("message,field", [
    ({**START, "realtime": "no"}, "realtime"),
    ({**START, "realtime": 0}, "realtime"),
    ({**START, "source": ["demo1"]}, "source"),
    ({**START, "source": {"name": "demo1"}}, "source"),
    ({**START, "chunk_frames": True}, "chunk_frames"),
    ({**START, "chunk_frames": "16"}, "chunk_frames"),
    ({**START, "lookahead_ms": 5000}, "lookahead_ms"),
    ({**START, "mode": "batch"}, "mode"),
    ({**START, "extra": 1}, "extra"),
    ({"type": "start"}, "source"),
    ({"type": "hello", "source": "demo1"}, "type"),
])
def test_start_messages_are_validated_strictly_naming_the_field(message, field):
    with pytest.raises(ProtocolError) as info:
        parse_start(json.dumps(message))
    assert info.value.field == field and f"field {field!r}: expected" in str(info.value)
    assert isinstance(info.value, InvalidInputError) and info.value.close_reason == f"invalid field {field}"


def test_a_valid_start_keeps_its_options():
    start = parse_start(json.dumps({**START, "mode": "utterance", "chunk_frames": 8, "lookahead_ms": 120,
                                    "idle": "silence", "realtime": False}))
    assert start.options() == {"mode": "utterance", "chunk_frames": 8, "lookahead_ms": 120.0, "idle": "silence",
                               "realtime": False}


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,  # would blow a recursive parser's stack: refused by size first
    '{"type": "start", "source": ' + "[" * 1000 + "]" * 1000 + "}",  # within the size limit, too deep
    '{"type": "start", "source": "demo1", "x": {"y": {"z": 1}}}',
    " " * (MAX_TEXT_BYTES + 1),
])
def test_oversized_or_deeply_nested_text_is_refused_before_parsing(text, monkeypatch):
    def no_parse(*args, **kwargs):
        raise AssertionError("the message reached the JSON parser")

    monkeypatch.setattr("engine.stream.protocol._START", type("P", (), {"validate_json": no_parse})())
    with pytest.raises(ProtocolError, match="expected (at most|JSON nested)"):
        parse_start(text)


def test_a_string_with_brackets_is_not_nesting():
    assert parse_start(json.dumps({**START, "source": "[[[[[{{{{"})).source == "[[[[[{{{{"


@pytest.mark.parametrize("message,field", [({"type": "close", "drain": "yes"}, "drain"),
                                           ({"type": "pause"}, "type"), ({}, "type"),
                                           ({"type": "end_of_speech", "now": True}, "now")])
def test_control_messages_are_validated(message, field):
    with pytest.raises(ProtocolError) as info:
        parse_control(json.dumps(message))
    assert info.value.field == field
    assert parse_control('{"type": "close", "drain": true}').drain is True


# ----------------------------------------------------------------------------- on the server
async def _refused(port: int, first) -> tuple[dict, int, str]:
    from websockets.exceptions import ConnectionClosed

    async with _connect(port) as ws:
        await ws.send(first)
        error = json.loads(await asyncio.wait_for(ws.recv(), 60))
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    return error, info.value.rcvd.code, info.value.rcvd.reason


@pytest.mark.parametrize("first,field", [
    (json.dumps({**START, "source": ["demo1"]}), "source"),
    (json.dumps({**START, "source": {"a": 1}}), "source"),
    (json.dumps({**START, "realtime": "no"}), "realtime"),
    ('{"type": "start", "source": ' + "[" * 2000 + "]" * 2000 + "}", None),
])
def test_server_refuses_bad_starts_with_1008_and_the_field_and_logs_no_traceback(running, caplog, first, field):
    running.gate.set()
    running.wait_ready()
    with caplog.at_level(logging.DEBUG):
        error, code, reason = asyncio.run(_refused(running.port, first))
    assert error["type"] == "error" and error["error"] == "InvalidInputError" and code == 1008
    if field is None:
        assert "nested" in error["message"] and reason == "invalid message"
    else:
        assert f"field {field!r}" in error["message"] and reason == f"invalid field {field}"
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    running.wait_idle()


def test_a_bad_control_message_after_start_closes_1008_naming_the_field(running):
    running.gate.set()
    running.wait_ready()

    async def client():
        from websockets.exceptions import ConnectionClosed

        async with _connect(running.port) as ws:
            await _start(ws)
            await ws.send(json.dumps({"type": "close", "drain": "yes"}))
            error = json.loads(await asyncio.wait_for(ws.recv(), 60))
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await asyncio.wait_for(ws.recv(), 60)
        return error, info.value.rcvd

    error, rcvd = asyncio.run(client())
    assert "field 'drain'" in error["message"] and rcvd.code == 1008 and rcvd.reason == "invalid field drain"
    running.wait_idle()


def test_an_idle_started_session_is_closed_and_frees_its_slot(running):
    """max_sessions is 1 here: after the idle session is closed, a new one starts."""
    from websockets.exceptions import ConnectionClosed

    running.gate.set()
    running.wait_ready()
    config = running.server.config
    running.server.config = dataclasses.replace(config, idle_timeout_s=1.0)

    async def client():
        async with _connect(running.port) as ws:
            await _start(ws)
            t0 = time.monotonic()
            error = json.loads(await asyncio.wait_for(ws.recv(), 30))
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 30)
            waited = time.monotonic() - t0
        async with _connect(running.port) as again:
            reply = await _start(again)
        return error, info.value.rcvd, waited, reply

    try:
        error, rcvd, waited, reply = asyncio.run(client())
    finally:
        running.server.config = config
    assert "idle timeout of 1 s" in error["message"] and rcvd.code == 1008 and 1.0 <= waited < 10
    assert reply["type"] == "started"
    running.wait_idle()


def test_serve_documents_the_idle_timeout_default():
    from engine.cli import build_parser
    from engine.stream.server import ServerConfig

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    option = next(a for a in serve._actions if "--idle-timeout" in a.option_strings)
    assert option.default == ServerConfig().idle_timeout_s == 60.0 and "default 60" in option.help
