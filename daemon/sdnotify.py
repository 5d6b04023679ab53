"""The sd_notify protocol (READY=1, WATCHDOG=1, STOPPING=1, STATUS=...) spoken over $NOTIFY_SOCKET.

A datagram per message to the unix socket systemd names (``@`` = abstract namespace). Without NOTIFY_SOCKET
(not under systemd, or a test) every call is a no-op. The watchdog is pinged from a task ON the event loop, so
a blocked loop stops pinging and systemd kills and restarts the service (WatchdogSec in the unit).
"""
from __future__ import annotations

import asyncio
import os
import socket

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        self.watchdog_s: float | None = None
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self._sock: socket.socket | None = None
        self.sent = 0
        self.errors = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; False (and counted) if it could not be sent."""
        if not self.address:
            return False
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), addr)
            self.sent += 1
            return True
        except OSError as e:
            self.errors += 1
            log.warning("sd_notify failed", error=str(e), address=self.address)
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str = "draining") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    async def watchdog_loop(self, interval_s: float | None = None) -> None:
        """Ping WATCHDOG=1 at half the watchdog period for as long as the loop runs freely."""
        period = interval_s or (self.watchdog_s / 2 if self.watchdog_s else None)
        if not period or not self.enabled:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(period)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
