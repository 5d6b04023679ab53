import asyncio
import time

from daemon.supervisor import Supervisor, loop_lag_monitor


def test_restartable_task_is_restarted_and_fatal_task_reported():
    fatal, restarts = [], []

    async def scenario():
        sup = Supervisor(on_fatal=lambda n, e: fatal.append((n, str(e))), on_restart=restarts.append,
                         backoff_initial_s=0.01)
        calls = {"flaky": 0}

        async def flaky():
            calls["flaky"] += 1
            if calls["flaky"] < 3:
                raise ConnectionError("venue went away")
            await asyncio.sleep(10)

        async def core():
            await asyncio.sleep(0.05)
            raise RuntimeError("broken invariant")

        sup.spawn("feed", flaky, restart=True)
        sup.spawn("core", core, restart=False)
        await asyncio.sleep(0.3)
        snap = sup.snapshot()
        await sup.stop()
        return calls, snap

    calls, snap = asyncio.run(scenario())
    assert calls["flaky"] == 3 and restarts == ["feed", "feed"]
    assert fatal == [("core", "broken invariant")]
    assert snap["feed"]["running"] and snap["feed"]["restarts"] == 2
    assert snap["core"]["last_error"] == "RuntimeError: broken invariant"


def test_loop_lag_is_observed_when_the_loop_is_blocked():
    lags = []

    async def scenario():
        t = asyncio.create_task(loop_lag_monitor(lags.append, 0.01))
        await asyncio.sleep(0.05)
        time.sleep(0.2)  # block the loop
        await asyncio.sleep(0.05)
        t.cancel()

    asyncio.run(scenario())
    assert max(lags) >= 0.15
