"""The OSPF part of the daemon's last-resort withdraw (after an incomplete fail-closed stop).

Rule: bounded, and never raises. The OSPF actuator blocks (vty sockets, ``vtysh``), so the
withdraw runs in a thread of its own, a daemon thread: one that hangs past the bound must not
hold the process's exit (the default executor's threads are joined at exit)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import TYPE_CHECKING

from anycastd.observe.logs import event

if TYPE_CHECKING:
    from anycastd.actuators.frr import OspfActuator

log = logging.getLogger("anycastd")


async def withdraw_ospf(ospf: OspfActuator, limit: float) -> bool:
    """Publish no OSPF route (``ospf.apply(frozenset())``) within ``limit`` seconds; True
    when done. A failure, a timeout or a bug is logged (CRITICAL), never raised."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def work() -> None:
        error: BaseException | None = None
        try:
            ospf.apply(frozenset())
        except Exception as exc:  # reported by the loop below, whatever it is
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=work, name="anycastd-last-resort-ospf", daemon=True).start()
    try:
        async with asyncio.timeout(limit):
            await done
    except TimeoutError:
        error = f"no answer within {limit:g}s"
    except Exception as exc:  # an ActuatorError, or a bug: the stop goes on either way
        error = str(exc) or type(exc).__name__
    else:
        event(log, "last_resort_ospf_withdraw", level=logging.WARNING,
              detail="every OSPF route withdrawn directly after an incomplete fail-closed stop")
        return True
    event(log, "last_resort_ospf_withdraw_failed", level=logging.CRITICAL, error=error,
          detail="OSPF routes may stay published until the routing daemon drops them")
    return False


__all__ = ["withdraw_ospf"]
