"""The streaming server's wire protocol, declared once: every client text message is validated by this schema.

`engine serve` (engine.stream.server) and the Ray ingress (engine.cluster.serve_app) both parse client
messages here, so they accept and refuse exactly the same things. The schema is pydantic v2 in strict mode:
`"realtime": "no"` is not a boolean, `true` is not a chunk length, a `source` that is a list or an object
is refused, unknown fields are refused. Before any JSON parsing, a text message is checked cheaply for its size
(`MAX_TEXT_BYTES`) and its nesting depth (`MAX_DEPTH`, by one pass over the characters), so a deeply nested
message is refused before a recursive parser can run out of stack. A refusal is a `ProtocolError`
(InvalidInputError): the server sends `{"type": "error", ...}` with a message that names the field, then
closes with 1008 and a close reason that names it too.

Binary messages are speech (int16 PCM, checked by `engine.stream.server.pcm_from_message`).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, TypeAdapter, ValidationError

from engine.errors import InvalidInputError
from engine.stream.config import CHUNK_CHOICES, CLIENT_OPTIONS, IDLE_POLICIES, MAX_LOOKAHEAD_MS, MODES

MAX_TEXT_BYTES = 4096  # a control message is a few dozen bytes; "start" with every option under 300
MAX_DEPTH = 2  # {"type": ...} is depth 1; nothing in the protocol nests deeper than that plus one
MAX_SOURCE_CHARS = 200


class ProtocolError(InvalidInputError):
    """A client message that the schema refuses; `field` names the offending field ("" for the whole message)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field

    @property
    def close_reason(self) -> str:
        """The WebSocket close reason (at most 123 bytes): names the field."""
        return (f"invalid field {self.field}" if self.field else "invalid message")[:120]


class _Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Start(_Message):
    """The first message of a connection: which source, and the session options (the server's defaults else)."""

    type: Literal["start"]
    source: StrictStr = Field(min_length=1, max_length=MAX_SOURCE_CHARS)
    mode: Literal[MODES] | None = None  # type: ignore[valid-type]
    chunk_frames: Literal[CHUNK_CHOICES] | None = None  # type: ignore[valid-type]
    lookahead_ms: Annotated[float, Field(ge=0, le=MAX_LOOKAHEAD_MS)] | None = None
    idle: Literal[IDLE_POLICIES] | None = None  # type: ignore[valid-type]
    realtime: StrictBool | None = None

    def options(self) -> dict:
        """The StreamConfig fields the client set."""
        return {k: getattr(self, k) for k in CLIENT_OPTIONS if getattr(self, k) is not None}


class EndOfSpeech(_Message):
    type: Literal["end_of_speech"]


class Close(_Message):
    type: Literal["close"]
    drain: StrictBool = False  # true: finish the queued speech first


Control = Annotated[Union[EndOfSpeech, Close], Field(discriminator="type")]
_START = TypeAdapter(Start)
_CONTROL = TypeAdapter(Control)


def nesting_depth(text: str, limit: int) -> int:
    """The deepest nesting of JSON arrays/objects in `text` (strings skipped), counting stops past `limit`."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def _check_raw(message, what: str) -> str:
    if not isinstance(message, str):
        raise ProtocolError(f"{what}: expected a text JSON object, found binary data")
    size = len(message.encode("utf-8", "surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise ProtocolError(f"{what}: expected at most {MAX_TEXT_BYTES} bytes, found {size} bytes")
    depth = nesting_depth(message, MAX_DEPTH)
    if depth > MAX_DEPTH:
        raise ProtocolError(f"{what}: expected JSON nested at most {MAX_DEPTH} deep, found deeper nesting "
                            f"({depth}+ levels)")
    return message


def _refusal(exc: ValidationError, what: str) -> ProtocolError:
    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error.get("loc", ())]
    if loc and loc[0] in ("start", "end_of_speech", "close") and len(loc) > 1:  # the union's tag
        loc = loc[1:]
    field = ".".join(loc)
    kind = error.get("type", "")
    found = repr(error.get("input"))
    found = found if len(found) <= 60 else found[:57] + "..."
    if kind == "json_invalid":
        return ProtocolError(f"{what}: expected JSON, found invalid JSON ({error.get('msg')})")
    if kind == "missing":
        return ProtocolError(f"{what} field {field!r}: expected a value, found none", field)
    if kind == "extra_forbidden":
        return ProtocolError(f"{what} field {field!r}: expected only the protocol's fields, found an unknown "
                             f"field", field)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return ProtocolError(f"{what} field 'type': expected end_of_speech or close, found "
                             f"{error.get('ctx', {}).get('tag', found)!r}" if kind == "union_tag_invalid"
                             else f"{what} field 'type': expected end_of_speech or close, found none", "type")
    if not field:
        return ProtocolError(f"{what}: expected a JSON object, found {found}")
    expected = str(error.get("msg", "a valid value"))
    for prefix in ("Input should be ", "Value should be ", "String should have "):
        if expected.startswith(prefix):
            expected = ("a string with " if prefix.startswith("String") else "") + expected[len(prefix):]
    return ProtocolError(f"{what} field {field!r}: expected {expected}, found {found}", field)


def parse_start(message) -> Start:
    """The first message, validated (ProtocolError naming the field); whether the source exists is the
    server's to check."""
    text = _check_raw(message, "first message")
    try:
        return _START.validate_json(text)
    except ValidationError as exc:
        raise _refusal(exc, "start message") from None


def parse_control(message: str) -> EndOfSpeech | Close:
    """A control message after "start", validated (ProtocolError naming the field)."""
    text = _check_raw(message, "control message")
    try:
        return _CONTROL.validate_json(text)
    except ValidationError as exc:
        raise _refusal(exc, "control message") from None
