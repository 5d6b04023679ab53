"""sd_notify over a real unix datagram socket, and the watchdog stopping when the loop is blocked."""
import asyncio
import socket
import time

from daemon.sdnotify import Notifier


def _listener(tmp_path):
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.setblocking(False)
    return s, path


def _drain(s):
    out = []
    while True:
        try:
            out.append(s.recv(4096).decode())
        except BlockingIOError:
            return out


def test_messages_reach_the_socket(tmp_path):
    s, path = _listener(tmp_path)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    assert n.enabled and n.watchdog_s == 0.2
    n.ready("trading")
    n.status("x=1")
    n.watchdog()
    n.stopping()
    assert _drain(s) == ["READY=1\nSTATUS=trading", "STATUS=x=1", "WATCHDOG=1", "STOPPING=1\nSTATUS=draining"]


def test_abstract_socket(tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"tradingd-test-{time.monotonic_ns()}"
    s.bind("\0" + name)
    s.setblocking(False)
    assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
    assert _drain(s) == ["READY=1"]


def test_no_socket_is_a_noop():
    n = Notifier({})
    assert not n.enabled and not n.ready() and n.sent == 0


def test_unreachable_socket_is_counted_not_raised(tmp_path):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert not n.watchdog() and n.errors == 1


def test_watchdog_pings_stop_while_the_loop_is_blocked(tmp_path):
    s, path = _listener(tmp_path)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})

    async def scenario():
        task = asyncio.create_task(n.watchdog_loop())
        await asyncio.sleep(0.5)            # free loop: pings every 50 ms
        free = len(_drain(s))
        time.sleep(0.5)                     # blocked loop: no pings can be sent
        blocked = len(_drain(s))
        await asyncio.sleep(0.3)            # free again: pings resume
        resumed = len(_drain(s))
        task.cancel()
        return free, blocked, resumed

    free, blocked, resumed = asyncio.run(scenario())
    assert free >= 5
    assert blocked == 0
    assert resumed >= 3
