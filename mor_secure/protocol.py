"""The versioned wire protocol: one small dataclass per message type, msgpack on the wire, never pickle.

``encode(msg) -> bytes`` and ``decode(data) -> Message``. Decoding is hostile-input safe: msgpack
is unpacked with size limits, the envelope must be ``{"v": 1, "t": TYPE, "b": {fields}}``, the
fields must match the message's schema exactly and every limit in ``Limits`` is enforced; any
violation raises ``ProtocolError`` naming the problem. Before msgpack builds anything, ``scan`` walks
the bytes and bounds the number of objects and the nesting of the whole message, so memory is bounded
per message, not per container. Peer values are range-checked too (a heartbeat interval > 0, a
worker id that is safe to log).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack

PROTOCOL_VERSION = 1

# Image payloads must be one of these formats (checked by magic bytes, never decoded here).
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


class ProtocolError(ValueError):
    """A message is malformed, of an unknown type or version, of wrong field types or over a limit;
    ``request_id`` is the request it belonged to when the envelope still showed one (so the reply can
    be an ``Error`` naming it without decoding the message twice)."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True)
class Limits:
    """Size limits enforced on every message encoded or decoded (both sides use the same defaults)."""

    max_message_bytes: int = 16 * 1024 * 1024
    max_items: int = 1024
    max_string_bytes: int = 64 * 1024
    max_image_bytes: int = 4 * 1024 * 1024
    max_depth: int = 8
    max_objects: int = 65536
    """Most msgpack objects (containers, strings, numbers ...) in one whole message, checked by ``scan``
    before anything is allocated: 65536 Python objects are a few MB, whatever their nesting."""


DEFAULT_LIMITS = Limits()

MIN_HEARTBEAT_S, MAX_HEARTBEAT_S = 0.05, 3600.0
"""The heartbeat interval a coordinator may ask for: above 0 (0 would be a busy loop) and at most an hour."""
WORKER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")
"""A worker id: 1-64 characters that need no quoting in a key=value log line."""


def _check_json_safe(value: Any, where: str, limits: Limits, depth: int = 0) -> None:
    if depth > limits.max_depth:
        raise ProtocolError(f"{where}: nested deeper than {limits.max_depth} levels")
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ProtocolError(f"{where}: non-finite number")
        return
    if isinstance(value, str):
        _check_str(value, where, limits)
        return
    if isinstance(value, list):
        if len(value) > limits.max_items:
            raise ProtocolError(f"{where}: {len(value)} items, more than the limit {limits.max_items}")
        for i, v in enumerate(value):
            _check_json_safe(v, f"{where}[{i}]", limits, depth + 1)
        return
    if isinstance(value, dict):
        if len(value) > limits.max_items:
            raise ProtocolError(f"{where}: {len(value)} keys, more than the limit {limits.max_items}")
        for k, v in value.items():
            if not isinstance(k, str):
                raise ProtocolError(f"{where}: keys must be strings, got {type(k).__name__}")
            _check_json_safe(v, f"{where}.{k}", limits, depth + 1)
        return
    raise ProtocolError(f"{where}: {type(value).__name__} is not a JSON-safe value")


def _check_str(value: str, where: str, limits: Limits) -> None:
    if len(value) > limits.max_string_bytes or len(value.encode("utf-8", "surrogatepass")) > limits.max_string_bytes:
        raise ProtocolError(f"{where}: string longer than {limits.max_string_bytes} bytes")


Checker = Callable[[Any, str, Limits], None]


def _check_number(value: Any, where: str, limits: Limits) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"{where}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ProtocolError(f"{where}: non-finite number")


def _check_int(value: Any, where: str, limits: Limits) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{where}: expected an integer, got {type(value).__name__}")


def _check_bytes(value: Any, where: str, limits: Limits) -> None:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"{where}: expected bytes, got {type(value).__name__}")


def _check_string(value: Any, where: str, limits: Limits) -> None:
    if not isinstance(value, str):
        raise ProtocolError(f"{where}: expected a string, got {type(value).__name__}")
    _check_str(value, where, limits)


def _check_map(value: Any, where: str, limits: Limits) -> None:
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: expected a map, got {type(value).__name__}")
    _check_json_safe(value, where, limits)


_SCALARS: dict[Any, Checker] = {float: _check_number, int: _check_int, bytes: _check_bytes, str: _check_string}


def _checker(tp: Any) -> Checker:
    """Compile the annotation ``tp`` into a checker once, at registration (hot path stays cheap)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        check_inner = _checker(inner)

        def check_optional(value: Any, where: str, limits: Limits) -> None:
            if value is not None:
                check_inner(value, where, limits)

        return check_optional
    if origin is list:
        check_item = _checker(typing.get_args(tp)[0])

        def check_list(value: Any, where: str, limits: Limits) -> None:
            if not isinstance(value, list):
                raise ProtocolError(f"{where}: expected a list, got {type(value).__name__}")
            if len(value) > limits.max_items:
                raise ProtocolError(f"{where}: {len(value)} items, more than the limit {limits.max_items}")
            for i, v in enumerate(value):
                check_item(v, f"{where}[{i}]", limits)

        return check_list
    if origin is dict:
        return _check_map
    return _SCALARS[tp]


class Message:
    """Base of every message type; ``TYPE`` is the name on the wire."""

    TYPE: ClassVar[str] = ""


_REGISTRY: dict[str, type[Message]] = {}
_HINTS: dict[type, dict[str, Any]] = {}
_CHECKERS: dict[type, list[tuple[str, str, Checker]]] = {}  # field, its name in errors, its checker
_REQUIRED: dict[type, list[str]] = {}  # fields without a default, in declaration order
_FLOATS: dict[type, list[str]] = {}  # float fields (msgpack may carry them as integers)


_M = typing.TypeVar("_M", bound=type[Message])


@typing.dataclass_transform(frozen_default=True)
def message(cls: _M) -> _M:
    """Class decorator: make ``cls`` a frozen dataclass message and register it by its ``TYPE``."""
    dataclass(frozen=True)(cls)  # in place: a class without __slots__ is decorated where it stands
    _REGISTRY[cls.TYPE] = cls
    _HINTS[cls] = {f.name: typing.get_type_hints(cls)[f.name] for f in dataclasses.fields(typing.cast(Any, cls))}
    _CHECKERS[cls] = [(name, f"{cls.TYPE}.{name}", _checker(tp)) for name, tp in _HINTS[cls].items()]
    _REQUIRED[cls] = [
        f.name
        for f in dataclasses.fields(typing.cast(Any, cls))
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    _FLOATS[cls] = [name for name, tp in _HINTS[cls].items() if tp is float]
    return cls


@message
class Hello(Message):
    """Agent -> coordinator right after the TLS handshake: who is speaking, and which worker."""

    TYPE: ClassVar[str] = "hello"
    agent_version: str
    worker_id: str
    protocol: int = PROTOCOL_VERSION


@message
class Welcome(Message):
    """Coordinator -> agent once the certificate, role and allow-list checks passed.

    TLS 1.3 clients finish their handshake before the server has judged their certificate, so
    an agent counts as connected only after this explicit application-level welcome.
    """

    TYPE: ClassVar[str] = "welcome"
    coordinator: str
    session_id: str
    heartbeat_s: float


@message
class Refused(Message):
    """Coordinator -> agent: the session is refused (reason says why and what to fix); then closed."""

    TYPE: ClassVar[str] = "refused"
    reason: str


@message
class Heartbeat(Message):
    """Either direction, periodically: proves the peer is alive (ROUTER reports no disconnects)."""

    TYPE: ClassVar[str] = "heartbeat"
    sent_at: float = 0.0


@message
class HealthRequest(Message):
    """Coordinator -> agent: are you alive and what do you serve?"""

    TYPE: ClassVar[str] = "health_request"
    request_id: str


@message
class HealthReply(Message):
    """Agent -> coordinator: liveness, agent version and the message types it serves."""

    TYPE: ClassVar[str] = "health_reply"
    request_id: str
    site: str
    agent_version: str
    serves: list[str] = dataclasses.field(default_factory=list)


@message
class ScoreRequest(Message):
    """Coordinator -> agent: score each (image, prompt, completion) item with the site's reward model.

    ``images`` holds PNG or JPEG bytes; item ``i`` uses ``images[image_index[i]]``, or ``images[i]``
    when ``image_index`` is empty (so a group of completions can share one image on the wire).
    """

    TYPE: ClassVar[str] = "score_request"
    request_id: str
    images: list[bytes]
    prompts: list[str]
    completions: list[str]
    image_index: list[int] = dataclasses.field(default_factory=list)
    objective: str | None = None


@message
class ScoreReply(Message):
    """Agent -> coordinator: one score per item, and which reward model produced them."""

    TYPE: ClassVar[str] = "score_reply"
    request_id: str
    scores: list[float]
    model_sha256: str


@message
class PrivacyReportMsg(Message):
    """Agent -> coordinator: the site's privacy report (JSON-safe values) signed with its key."""

    TYPE: ClassVar[str] = "privacy_report"
    report: dict[str, Any]
    signature: bytes
    cert_pem: bytes = b""
    """The signer's certificate (PEM); the coordinator accepts it only if it is the certificate the
    TLS session authenticated (same fingerprint)."""


@message
class Error(Message):
    """Agent -> coordinator: request ``request_id`` failed; ``code`` is machine-readable."""

    TYPE: ClassVar[str] = "error"
    request_id: str
    code: str
    message: str


def message_types() -> dict[str, type[Message]]:
    """Every registered message type by its wire name."""
    return dict(_REGISTRY)


def request_id_of(msg: Message) -> str | None:
    """The request id a message carries, or None."""
    return getattr(msg, "request_id", None)


def _check_score_request(msg: ScoreRequest, limits: Limits) -> None:
    n = len(msg.prompts)
    if len(msg.completions) != n:
        raise ProtocolError(f"score_request: {n} prompts but {len(msg.completions)} completions")
    for i, image in enumerate(msg.images):
        if len(image) > limits.max_image_bytes:
            raise ProtocolError(
                f"score_request.images[{i}]: {len(image)} bytes, more than the limit {limits.max_image_bytes}"
            )
        if not bytes(image[:8]).startswith(_IMAGE_MAGIC):
            raise ProtocolError(f"score_request.images[{i}]: not a PNG or JPEG image")
    if msg.image_index:
        if len(msg.image_index) != n:
            raise ProtocolError(f"score_request: image_index has {len(msg.image_index)} entries for {n} items")
        if any(not 0 <= j < len(msg.images) for j in msg.image_index):
            raise ProtocolError("score_request: image_index points outside images")
    elif len(msg.images) != n:
        raise ProtocolError(f"score_request: {len(msg.images)} images for {n} items and no image_index")


def check_worker_id(value: str, where: str = "worker_id") -> None:
    """Refuse a worker id that is not 1-64 of ``A-Z a-z 0-9 . _ : @ -`` (it goes into logs and status)."""
    if not isinstance(value, str) or not WORKER_ID_RE.fullmatch(value):
        raise ProtocolError(
            f"{where} {str(value)[:80]!r} is not 1-64 characters of letters, digits and . _ : @ -"
            "; choose another --worker-id"
        )


def _check_hello(msg: Hello, limits: Limits) -> None:
    check_worker_id(msg.worker_id, "hello.worker_id")
    if not msg.agent_version or len(msg.agent_version) > 64 or not msg.agent_version.isprintable():
        raise ProtocolError("hello.agent_version must be 1-64 printable characters")


def _check_welcome(msg: Welcome, limits: Limits) -> None:
    if not MIN_HEARTBEAT_S <= msg.heartbeat_s <= MAX_HEARTBEAT_S:
        raise ProtocolError(
            f"welcome.heartbeat_s {msg.heartbeat_s!r} is outside [{MIN_HEARTBEAT_S:g}, {MAX_HEARTBEAT_S:g}] seconds"
        )


_CHECKS: dict[type, Callable[[Any, Limits], None]] = {
    ScoreRequest: _check_score_request,
    Hello: _check_hello,
    Welcome: _check_welcome,
}


def validate(msg: Message, limits: Limits = DEFAULT_LIMITS) -> None:
    """Check a message against its schema and the limits; raise ``ProtocolError`` if it breaks one."""
    for name, where, check_field in _CHECKERS[type(msg)]:
        check_field(getattr(msg, name), where, limits)
    check = _CHECKS.get(type(msg))
    if check is not None:
        check(msg, limits)


def encode(msg: Message, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Validate ``msg`` and pack it as ``{"v", "t", "b"}`` msgpack bytes."""
    parts = encode_parts(msg, limits)
    return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)


# Byte strings at least this large are passed through by reference, not copied into the packing.
_BY_REFERENCE = 64 * 1024
_packb = msgpack.Packer(use_bin_type=True, autoreset=True)


def _is_big(value: Any) -> bool:
    return isinstance(value, (bytes, bytearray, memoryview)) and len(value) >= _BY_REFERENCE


def _pack_parts(value: Any, parts: list, pending: bytearray) -> None:
    """Append ``value``'s msgpack encoding: small pieces into ``pending``, large byte strings as is."""
    if _is_big(value):
        pending += b"\xc6" + len(value).to_bytes(4, "big")  # bin32 header; the bytes follow uncopied
        parts.append(bytes(pending))
        pending.clear()
        parts.append(value)
    elif isinstance(value, list) and any(_is_big(v) for v in value):
        pending += _packb.pack_array_header(len(value))
        for item in value:
            _pack_parts(item, parts, pending)
    else:
        pending += _packb.pack(value)


def encode_parts(msg: Message, limits: Limits = DEFAULT_LIMITS) -> list[bytes | bytearray | memoryview]:
    """Like ``encode`` but as a list of buffers whose concatenation is the message; large images
    stay the caller's objects (no copy), so the transport encrypts them straight from memory."""
    if type(msg).TYPE not in _REGISTRY or _REGISTRY[type(msg).TYPE] is not type(msg):
        raise ProtocolError(f"{type(msg).__name__} is not a registered message type")
    validate(msg, limits)
    body = {name: getattr(msg, name) for name in _HINTS[type(msg)]}
    if not any(_is_big(v) or isinstance(v, list) and any(_is_big(i) for i in v) for v in body.values()):
        parts: list = [_packb.pack({"v": PROTOCOL_VERSION, "t": msg.TYPE, "b": body})]
    else:
        parts, pending = [], bytearray(_packb.pack_map_header(3))
        pending += _packb.pack("v") + _packb.pack(PROTOCOL_VERSION) + _packb.pack("t") + _packb.pack(msg.TYPE)
        pending += _packb.pack("b") + _packb.pack_map_header(len(body))
        for name, value in body.items():
            pending += _packb.pack(name)
            _pack_parts(value, parts, pending)
        if pending:
            parts.append(bytes(pending))
    size = sum(len(p) for p in parts)
    if size > limits.max_message_bytes:
        raise ProtocolError(
            f"{msg.TYPE}: {size} bytes encoded, more than the limit "
            f"{limits.max_message_bytes}; send fewer items per request"
        )
    return parts


# --------------------------------------------------------------------------- pre-scan (before allocating)

# Fixed-size msgpack items by first byte: bytes that follow the type byte.
_FIXED = {
    0xC0: 0,
    0xC2: 0,
    0xC3: 0,
    0xCA: 4,
    0xCB: 8,
    0xCC: 1,
    0xCD: 2,
    0xCE: 4,
    0xCF: 8,
    0xD0: 1,
    0xD1: 2,
    0xD2: 4,
    0xD3: 8,
}
# Length-prefixed strings and binaries: width of the length field.
_SIZED = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
# Containers: width of the count field and whether each entry is a key/value pair.
_CONTAINERS = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}


def scan(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> int:
    """Walk the msgpack structure without building it and return its object count; raise
    ``ProtocolError`` when it holds more than ``limits.max_objects`` objects, nests deeper than the
    envelope plus ``limits.max_depth``, uses an extension type or is truncated. ``decode`` calls it
    first, so a message of a million empty maps costs a count, not a million dicts (msgpack's own
    limits are per container)."""
    view = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else data
    size, pos, objects = len(view), 0, 0
    max_depth = limits.max_depth + 3  # envelope map, body map, field value
    stack: list[int] = []  # objects still expected in each open container
    expected = 1
    while True:
        while expected == 0:
            if not stack:
                if pos > size:
                    raise ProtocolError("not a msgpack message: truncated")
                if pos < size:
                    raise ProtocolError(f"not a msgpack message: {size - pos} bytes of trailing data")
                return objects
            expected = stack.pop()
        if pos >= size:
            raise ProtocolError("not a msgpack message: truncated")
        expected -= 1
        objects += 1
        if objects > limits.max_objects:
            raise ProtocolError(f"more than {limits.max_objects} objects in one message (limit max_objects)")
        byte = view[pos]
        pos += 1
        if byte <= 0x7F or byte >= 0xE0:
            continue
        count = 0
        if 0x80 <= byte <= 0x8F:
            count = 2 * (byte & 0x0F)
        elif 0x90 <= byte <= 0x9F:
            count = byte & 0x0F
        elif 0xA0 <= byte <= 0xBF:
            pos += byte & 0x1F
            continue
        elif byte in _FIXED:
            pos += _FIXED[byte]
            continue
        elif byte in _SIZED:
            width = _SIZED[byte]
            pos += width + int.from_bytes(view[pos : pos + width], "big")
            continue
        elif byte in _CONTAINERS:
            width, per_entry = _CONTAINERS[byte]
            count = per_entry * int.from_bytes(view[pos : pos + width], "big")
            pos += width
        else:
            raise ProtocolError(f"not a msgpack message: type byte 0x{byte:02x} (extension or reserved) is not allowed")
        if count > limits.max_objects - objects:
            raise ProtocolError(
                f"a container of {count} objects would take the message past "
                f"{limits.max_objects} objects (limit max_objects)"
            )
        if count:
            stack.append(expected)
            if len(stack) > max_depth:
                raise ProtocolError(f"nested deeper than {limits.max_depth} levels")
            expected = count


def decode(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Unpack and validate one message; every defect raises ``ProtocolError``."""
    if len(data) > limits.max_message_bytes:
        raise ProtocolError(f"message of {len(data)} bytes, more than the limit {limits.max_message_bytes}")
    scan(data, limits)
    try:
        envelope = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=max(limits.max_image_bytes, 4096),
            max_str_len=limits.max_string_bytes,
            max_array_len=limits.max_items,
            max_map_len=max(limits.max_items, 16),
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types on garbage; all mean the same here
        raise ProtocolError(f"not a msgpack message: {type(exc).__name__}: {exc}") from None
    if not isinstance(envelope, dict) or set(envelope) != {"v", "t", "b"}:
        raise ProtocolError("not a protocol envelope (expected a map with keys v, t, b)")
    version, kind, body = envelope["v"], envelope["t"], envelope["b"]
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version!r} is not supported (this side speaks "
            f"{PROTOCOL_VERSION}); install the same mor-secure version on both sides"
        )
    cls = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {str(kind)[:40]!r}")
    if not isinstance(body, dict):
        raise ProtocolError(f"{kind}: body must be a map")
    try:
        return _build(cls, body, limits)
    except ProtocolError as exc:
        request_id = body.get("request_id")
        if isinstance(request_id, str) and 0 < len(request_id) <= 200:
            exc.request_id = request_id
        raise


def _build(cls: type[Message], body: dict[str, Any], limits: Limits) -> Message:
    """The message ``cls`` from a decoded body: known fields only, none missing, every check passed."""
    kind = cls.TYPE
    hints = _HINTS[cls]  # the tables are compiled at registration: decoding runs per message
    if not hints.keys() >= body.keys():
        unknown = set(body) - set(hints)
        raise ProtocolError(f"{kind}: unknown field(s) {sorted(map(str, unknown))[:5]}")
    missing = [name for name in _REQUIRED[cls] if name not in body]
    if missing:
        raise ProtocolError(f"{kind}: missing field(s) {missing}")
    for name in _FLOATS[cls]:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            body[name] = float(value)
    msg = cls(**body)
    validate(msg, limits)
    return msg
