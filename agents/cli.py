"""`arx agent`: run one specialist until its campaign stops or the process is told to stop."""

from __future__ import annotations

import importlib
import inspect
import logging
import signal

import anyio

from agents.base import Specialist
from agents.registry import POLICIES

# Arguments only some policies take (llm: --model, --no-lineage): passed to the classes that accept them.
POLICY_OPTIONS = ("model", "no_lineage")


def build_specialist(args) -> Specialist:
    if args.policy not in POLICIES:
        raise ValueError(f"unknown policy {args.policy!r}; known: {', '.join(sorted(POLICIES))}")
    module_name, class_name = POLICIES[args.policy].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(
        specialist=args.specialist,
        surface=args.surface,
        campaign_id=args.campaign,
        max_in_flight=args.max_in_flight,
        seed=args.seed,
        **policy_options(cls, args),
    )


def policy_options(cls: type[Specialist], args) -> dict:
    accepted = inspect.signature(cls.__init__).parameters
    return {name: getattr(args, name) for name in POLICY_OPTIONS if name in accepted and hasattr(args, name)}


async def run_until_signal(agent: Specialist) -> int:
    """0 once the campaign has stopped; 128 + the signal number after SIGINT or SIGTERM."""
    status = 0
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            nonlocal status
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    logging.getLogger("arx.agent").info("%s: stopping on %s", agent.specialist, name)
                    status = 128 + signum
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
        await agent.run()
        tg.cancel_scope.cancel()
    return status


def cli(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return anyio.run(run_until_signal, build_specialist(args))
