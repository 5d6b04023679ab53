"""``POST /control/{halt,resume,flatten,retrain,pin-champion,pin-challenger}`` (bearer token checked by daemon.http): what each action does to
the running components. ``ts`` is the market's time (the simulator's when it runs faster than the wall clock)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from daemon.hotswap import RetrainCycle
    from daemon.kernel import Components

ACTIONS = ("halt", "resume", "flatten", "retrain", "pin-champion", "pin-challenger")


def control(action: str, parts: Components | None, retrain: RetrainCycle | None, ts: int) -> dict:
    """Apply ``action``; the answer is the HTTP body (``ok`` false with ``error`` when refused)."""
    if parts is None:
        return {"ok": False, "error": "not started"}
    pipe = parts.pipeline
    if action == "halt":
        pipe.halt("control", ts)
    elif action == "resume":
        pipe.resume(ts)
    elif action == "flatten":
        d = pipe.flatten(ts)
        return {"ok": True, "orders": [i.client_order_id for i in d.intents], "fills": len(d.fills),
                "risk": d.risk, "errors": d.errors}
    elif action == "retrain":
        if retrain is None:
            return {"ok": False, "error": "retraining is disabled (retrain.enabled = false)"}
        return retrain.start("control")
    elif action in ("pin-champion", "pin-challenger"):
        shadow = getattr(retrain, "shadow", None)
        if shadow is None:
            return {"ok": False, "error": "the shadow A/B is disabled (shadow.enabled = false)"}
        ended = shadow.pin(action.split("-", 1)[1], ts)
        return {"ok": True, "ended": ended}
    else:
        return {"ok": False, "error": f"unknown action {action}"}
    return {"ok": True, "risk_state": parts.risk.state.value}
