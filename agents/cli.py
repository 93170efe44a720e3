"""`arx agent`: run one specialist until its campaign stops or the process is told to stop."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import signal
import sys

import anyio

from agents.base import Specialist
from agents.registry import POLICIES
from bus.argtypes import positive_int
from bus.logs import setup_logging

log = logging.getLogger("arx.agent")

# Arguments only some policies take (llm: --model, --no-lineage): passed to the classes that accept them.
POLICY_OPTIONS = ("model", "no_lineage")


def build_specialist(args) -> Specialist:
    cls = policy_class(args.policy)
    return cls(
        specialist=args.specialist,
        surface=args.surface,
        campaign_id=args.campaign,
        max_in_flight=args.max_in_flight,
        seed=args.seed,
        **policy_options(cls, args),
    )


def policy_class(policy: str) -> type[Specialist]:
    """A built-in policy's class, or the Specialist subclass that `module:Class` names."""
    if ":" not in policy:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; known: {', '.join(sorted(POLICIES))}, or module:Class")
        module_name, class_name = POLICIES[policy].split(":")
        return getattr(importlib.import_module(module_name), class_name)
    module_name, _, class_name = policy.partition(":")
    if not module_name or not class_name.isidentifier():
        raise ValueError(f"--policy {policy!r}: give module:Class, e.g. lower_lr:LowerLR")
    # The console script's path starts at its own bin/, not where the user runs it: a policy file in
    # the current directory is found after everything installed, so it never shadows a real module.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except (ImportError, SyntaxError) as exc:
        raise ValueError(f"--policy {policy}: {_import_failure(module_name, exc)}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"--policy {policy}: module {module_name!r} ({module.__file__}) has no {class_name!r}")
    if not (inspect.isclass(cls) and issubclass(cls, Specialist)) or cls is Specialist:
        raise ValueError(f"--policy {policy}: {class_name} is not a subclass of agents.base.Specialist")
    return cls


def _import_failure(module_name: str, exc: Exception) -> str:
    """The module missing itself, or failing to import (a module it imports is missing, a syntax error)."""
    if isinstance(exc, ModuleNotFoundError) and exc.name and f"{module_name}.".startswith(f"{exc.name}."):
        return f"no module {module_name!r} in the current directory or on PYTHONPATH"
    return f"importing {module_name!r} failed: {exc}"


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
                    log.info("%s: stopping on %s", agent.specialist, name)
                    status = 128 + signum
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
        await agent.run()
        tg.cancel_scope.cancel()
    return status


def run_agent(agent: Specialist) -> int:
    """Run a specialist as `arx agent` does: logging on stderr, a first line saying what runs, and a
    clean stop on SIGINT or SIGTERM; returns the exit status."""
    setup_logging()
    log.info("%s: running policy %s on surface %s, campaign %s", agent.specialist, agent.policy, agent.surface,
             agent.campaign_id or "the latest running")
    return anyio.run(run_until_signal, agent)


def cli_arguments(parser) -> None:
    parser.add_argument("--policy", default="tpe", metavar="NAME|module:Class",
                        help=f"a built-in policy ({', '.join(sorted(POLICIES))}; default: tpe), or module:Class, a "
                        "Specialist subclass in the current directory or on PYTHONPATH")
    parser.add_argument("--specialist", required=True, help="this agent's name, e.g. tpe-optimizer")
    parser.add_argument("--surface", required=True, help="the task surface it may edit ('*' for all)")
    parser.add_argument("--campaign", help="campaign to work on (default: the latest running one)")
    parser.add_argument("--max-in-flight", type=positive_int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="llm: the model the OpenAI-compatible endpoint (OPENAI_BASE_URL) serves")
    parser.add_argument(
        "--no-lineage", action="store_true", help="llm: show only the incumbent's id and score (a control arm)"
    )


def cli(args) -> int:
    return run_agent(build_specialist(args))
