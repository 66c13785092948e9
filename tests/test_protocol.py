"""The wire protocol: every message round-trips; garbage, wrong versions, types and sizes are refused."""

from __future__ import annotations

import dataclasses
import math

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mor_secure import protocol
from mor_secure.protocol import (
    Error,
    HealthReply,
    HealthRequest,
    Heartbeat,
    Hello,
    Limits,
    PrivacyReportMsg,
    ProtocolError,
    Refused,
    ScoreReply,
    ScoreRequest,
    Welcome,
    decode,
    encode,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 32

EXAMPLES = [
    Hello(agent_version="0.1.0", worker_id="host-1"),
    Welcome(coordinator="coord", session_id="abc", heartbeat_s=5.0),
    Refused(reason="not on the allow-list"),
    Heartbeat(sent_at=12.5),
    HealthRequest(request_id="r1"),
    HealthReply(request_id="r1", site="site-a", agent_version="0.1.0", serves=["health_request"]),
    ScoreRequest(
        request_id="r2",
        images=[PNG, JPEG],
        prompts=["a", "b", "c"],
        completions=["x", "y", "z"],
        image_index=[0, 0, 1],
        objective="concise",
    ),
    ScoreReply(request_id="r2", scores=[0.25, -1.0, 3.5], model_sha256="ab" * 32),
    PrivacyReportMsg(
        report={"epsilon": 2.5, "delta": 1e-5, "runs": [{"steps": 10}], "site": "a"}, signature=b"\x01" * 64
    ),
    Error(request_id="r2", code="busy", message="try later"),
]


def _envelope(kind: str, body: dict, version: int = protocol.PROTOCOL_VERSION) -> bytes:
    return msgpack.packb({"v": version, "t": kind, "b": body}, use_bin_type=True)


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: m.TYPE)
def test_every_message_type_round_trips(msg):
    assert decode(encode(msg)) == msg


def test_every_registered_type_has_an_example():
    assert {m.TYPE for m in EXAMPLES} == set(protocol.message_types())


def test_a_one_megabyte_image_round_trips():
    big = ScoreRequest(request_id="big", images=[PNG + bytes(1 << 20)], prompts=["p"], completions=["c"])
    assert decode(encode(big)).images[0] == big.images[0]


@pytest.mark.parametrize(
    "data, cause",
    [
        (b"", "not a msgpack message"),
        (b"\xc1garbage", "not a msgpack message"),
        (msgpack.packb([1, 2, 3]), "not a protocol envelope"),
        (_envelope("hello", {"agent_version": "1", "worker_id": "w"}, version=2), "version 2 is not supported"),
        (_envelope("pickle", {}), "unknown message type"),
        (_envelope("hello", {"agent_version": 1, "worker_id": "w"}), "expected a string"),
        (_envelope("hello", {"worker_id": "w"}), "missing field"),
        (_envelope("hello", {"agent_version": "1", "worker_id": "w", "extra": 1}), "unknown field"),
        (_envelope("heartbeat", {"sent_at": True}), "expected a number"),
        (_envelope("score_reply", {"request_id": "r", "scores": [float("nan")], "model_sha256": "x"}), "non-finite"),
        (
            _envelope(
                "score_request", {"request_id": "r", "images": [b"GIF89a"], "prompts": ["p"], "completions": ["c"]}
            ),
            "not a PNG or JPEG",
        ),
        (
            _envelope(
                "score_request", {"request_id": "r", "images": [PNG], "prompts": ["p", "q"], "completions": ["c"]}
            ),
            "2 prompts but 1 completions",
        ),
        (
            _envelope(
                "score_request",
                {"request_id": "r", "images": [PNG], "prompts": ["p"], "completions": ["c"], "image_index": [3]},
            ),
            "outside images",
        ),
        (
            _envelope(
                "privacy_report",
                {"report": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {}}}}}}}}}}, "signature": b""},
            ),
            "nested deeper",
        ),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(data, cause):
    with pytest.raises(ProtocolError, match=cause):
        decode(data)


def test_limits_bound_items_strings_images_and_total_size():
    small = Limits(max_message_bytes=4096, max_items=4, max_string_bytes=16, max_image_bytes=64)
    with pytest.raises(ProtocolError, match="items"):
        encode(ScoreReply(request_id="r", scores=[0.0] * 5, model_sha256="x"), small)
    with pytest.raises(ProtocolError, match="longer than 16"):
        encode(Refused(reason="x" * 17), small)
    with pytest.raises(ProtocolError, match="bytes, more than the limit 64"):
        encode(ScoreRequest(request_id="r", images=[PNG + bytes(64)], prompts=["p"], completions=["c"]), small)
    with pytest.raises(ProtocolError, match="more than the limit 4096"):
        decode(bytes(5000), small)
    # msgpack's own limits stop huge length headers before anything is allocated
    with pytest.raises(ProtocolError, match="not a msgpack"):
        decode(b"\xdb\xff\xff\xff\xff" + b"x" * 10, small)


def test_encode_refuses_what_decode_would_refuse():
    with pytest.raises(ProtocolError, match="non-finite"):
        encode(ScoreReply(request_id="r", scores=[math.inf], model_sha256="x"))
    with pytest.raises(ProtocolError, match="JSON-safe"):
        encode(PrivacyReportMsg(report={"x": object()}, signature=b""))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_random_bytes_raise_only_protocol_errors(data):
    try:
        decode(data)
    except ProtocolError:
        pass


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(sorted(protocol.message_types())),
    body=st.dictionaries(
        st.sampled_from(
            [
                "request_id",
                "images",
                "prompts",
                "completions",
                "scores",
                "reason",
                "report",
                "signature",
                "sent_at",
                "x",
            ]
        ),
        _values,
        max_size=5,
    ),
)
def test_well_formed_envelopes_with_random_bodies_never_crash(kind, body):
    try:
        msg = decode(_envelope(kind, body))
    except ProtocolError:
        return
    assert decode(encode(msg)) == msg  # whatever is accepted is valid and stable


def test_a_message_of_millions_of_tiny_objects_is_refused_before_it_is_built():
    """15 MB of nested empty maps once cost 2.2 GB: the pre-scan bounds objects per message, not per container."""
    import tracemalloc

    bomb = _envelope("privacy_report", {"report": {"x": [[{}] * 1000] * 1000}, "signature": b""})
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="max_objects"):
            decode(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024
    with pytest.raises(ProtocolError, match="max_objects"):
        decode(
            _envelope("privacy_report", {"report": {"x": [[1] * 1000] * 2}, "signature": b""}), Limits(max_objects=1500)
        )


def test_a_failed_decode_names_its_request_without_a_second_decoding():
    with pytest.raises(ProtocolError) as failed:
        decode(_envelope("score_request", {"request_id": "r9", "images": [], "prompts": [1], "completions": []}))
    assert failed.value.request_id == "r9"


@pytest.mark.parametrize(
    "msg, cause",
    [
        (Welcome(coordinator="c", session_id="s", heartbeat_s=0.0), "heartbeat_s"),
        (Welcome(coordinator="c", session_id="s", heartbeat_s=-1.0), "heartbeat_s"),
        (Hello(agent_version="1", worker_id="w1 level=ERROR\nforged"), "worker_id"),
        (Hello(agent_version="1", worker_id=""), "worker_id"),
        (Hello(agent_version="\x1b[2J", worker_id="w"), "agent_version"),
    ],
)
def test_peer_values_out_of_range_are_refused_both_ways(msg, cause):
    with pytest.raises(ProtocolError, match=cause):
        encode(msg)
    raw = msgpack.packb(
        {"v": 1, "t": msg.TYPE, "b": {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}}, use_bin_type=True
    )
    with pytest.raises(ProtocolError, match=cause):
        decode(raw)
