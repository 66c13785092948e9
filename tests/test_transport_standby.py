"""The standby that covers for the agent's network thread while a handler it runs overruns, its one-shot
timers, and the agent's behaviour built on them (requests answered during a long handler)."""

from __future__ import annotations

import threading
import time

import pytest

from mor_secure.protocol import HealthReply, HealthRequest, ScoreReply, ScoreRequest
from mor_secure.transport import ClientOptions, ServerOptions, TLSClient, TLSServer
from mor_secure.transport.standby import Standby
from mor_secure.transport.timer import ConditionTimer, TimerFD, one_shot_timer
from tests.test_transport_tls import _ctx

PNG = b"\x89PNG\r\n\x1a\n" + bytes(8)
TIMERS = [ConditionTimer, *([TimerFD] if isinstance(one_shot_timer(), TimerFD) else [])]


@pytest.mark.parametrize("make", TIMERS, ids=lambda t: t.__name__)
def test_a_timer_wakes_its_waiter_once_per_expiry_and_a_rearm_replaces_the_setting(make):
    timer = make()
    woke = threading.Event()

    def waiter() -> None:
        timer.wait()
        woke.set()

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    timer.arm(3600)
    timer.arm(3600)  # replaces, does not add an expiry
    assert not woke.wait(0.05)
    timer.arm(0.001)
    assert woke.wait(10)
    thread.join(10)
    timer.close()


class Loop:
    """A stand-in for the agent's network loop: counts the turns the standby runs."""

    def __init__(self) -> None:
        self.turns = 0
        self.turned = threading.Event()
        self.failure: BaseException | None = None
        self.woken = threading.Event()

    def turn(self) -> None:
        self.turns += 1
        self.turned.set()
        if self.failure is not None:
            raise self.failure
        self.woken.wait(0.05)
        self.woken.clear()


def test_a_short_job_never_wakes_the_standby():
    loop = Loop()
    standby = Standby(loop.turn, loop.woken.set, delay_s=3600, name="t-standby")
    try:
        for _ in range(100):
            with standby.covering():
                pass
        assert standby.takeovers == 0 and loop.turns == 0
    finally:
        standby.close()


def test_an_overrunning_job_is_covered_until_it_ends_and_the_duty_comes_back():
    loop = Loop()
    standby = Standby(loop.turn, loop.woken.set, delay_s=0.001, name="t-standby")
    try:
        with standby.covering():
            assert loop.turned.wait(10)  # the job overran: the standby runs the loop's turns meanwhile
        assert standby.takeovers == 1
        turns = loop.turns
        time.sleep(0.1)
        assert loop.turns == turns  # the duty is back with the loop thread: no more standby turns
        with standby.covering():  # and it covers the next overrun too
            loop.turned.clear()
            assert loop.turned.wait(10)
        assert standby.takeovers == 2
    finally:
        standby.close()


def test_a_failure_in_a_standby_turn_is_raised_in_the_loop_thread_when_the_job_ends():
    loop = Loop()
    loop.failure = ConnectionError("lost")
    standby = Standby(loop.turn, loop.woken.set, delay_s=0.001, name="t-standby")
    try:
        with pytest.raises(ConnectionError, match="lost"):
            with standby.covering():
                assert loop.turned.wait(10)
        loop.failure = None
        with standby.covering():  # raised once, then forgotten
            pass
    finally:
        standby.close()


def test_the_agent_answers_while_its_network_thread_runs_a_long_handler(pki_dir):
    """A health request is read, handed to the pool and answered while a scoring handler (on the network
    thread) waits for that very answer: only a standby that took over the socket makes this finish."""
    with TLSServer(
        "tcp://127.0.0.1:0",
        lambda: _ctx(pki_dir, "coordinator", "coord"),
        name="coord",
        options=ServerOptions(heartbeat_s=0.2, peer_timeout_s=5.0),
    ) as server:
        agent = TLSClient(
            server.endpoint,
            lambda: _ctx(pki_dir, "client", "site-a"),
            coordinators=["coord"],
            worker_id="w",
            agent_version="t",
            options=ClientOptions(heartbeat_s=0.2),
        )
        answered = threading.Event()
        agent.register(HealthRequest, lambda m: HealthReply(m.request_id, "site-a", "t", []))
        agent.register(ScoreRequest, lambda m: ScoreReply(m.request_id, [float(answered.wait(10))], "t"))
        agent.start()
        try:
            assert agent.connected.wait(10) and agent.error is None
            slow = server.request(agent.session_id, ScoreRequest("s", images=[PNG], prompts=["p"], completions=["c"]))
            assert server.request(agent.session_id, HealthRequest(request_id="h")).result(10).site == "site-a"
            answered.set()
            assert slow.result(10).scores == [1.0]
            assert agent.connections == 1
        finally:
            agent.stop()
