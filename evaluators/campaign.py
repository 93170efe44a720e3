"""`arx campaign start|stop`: open a campaign with its baseline bundle, or close it by hand."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import sys

import msgspec

from agents.registry import ARMS
from bus.argtypes import at_least_two, positive_float, positive_int
from bus.connection import Bus
from bus.events import Budgets, CampaignStarted, CampaignStopped, Prices, StopRules, TrialProposed, check_token
from evaluators.spec import Task, load_task, task_names
from executors.devices import DEVICES_HELP, parse_devices
from projections import views
from projections.follow import catch_up
from projections.lineage import Lineage
from projections.ledger import budgets_from
from projections.stop_rules import rules_from

BASELINE = "baseline"


def baseline_params(task: Task) -> dict[str, float]:
    """The starting recipe's knob values, so search policies know where the search began."""
    from agents.edits import read_knob

    return {
        knob.name: read_knob((task.recipe_dir / knob.path).read_text(), knob.name)
        for knob in task.spec.knobs
    }


async def start_campaign(
    bus: Bus, task: Task, *, campaign_id: str, trials: int, arm: str = "lineage", noise: float | None = None,
    stop_rules: StopRules = StopRules(), budgets: Budgets = Budgets(),
) -> CampaignStarted:
    """Publish CampaignStarted with the recipe bundle, then queue the baseline trial."""
    check_token("campaign", campaign_id)
    bundle = task.bundle()
    ref = await bus.put_object(f"bundles/{hashlib.sha256(bundle).hexdigest()}.tar.gz", bundle)
    started = CampaignStarted(
        campaign_id=campaign_id,
        producer="arx-campaign",
        task=task.name,
        metric=task.spec.metric,
        direction=task.spec.direction,
        max_trials=trials,
        bundle=ref,
        arm=arm,
        noise=task.spec.noise if noise is None else noise,
        spec=msgspec.to_builtins(task.spec),
        stop_rules=stop_rules,
        budgets=budgets,
        prices=Prices(llm=bus.settings.llm_prices, device_hour=bus.settings.device_prices),
    )
    if not await bus.publish(started):
        raise ValueError(f"campaign {campaign_id} already exists; pick another --campaign")
    await bus.publish(
        TrialProposed(
            campaign_id=campaign_id,
            producer="arx-campaign",
            causation_id=started.event_id,
            trial_id=BASELINE,
            specialist=BASELINE,
            surface=BASELINE,
            parent_id=None,
            hypothesis="The starting recipe, measured as the first incumbent.",
            diff="",
            params=baseline_params(task),
            policy=BASELINE,
        )
    )
    return started


async def measured_noise(task: Task, runs: int, devices: str) -> float:
    """The noise floor measured on the starting recipe (the report goes to stderr: stdout is the id)."""
    from evaluators.noise import measure_noise

    report = await measure_noise(task, runs, devices=parse_devices(devices),
                                 progress=lambda line: print(line, file=sys.stderr, flush=True))
    noise = report.stats.relative_std  # raises when a run gave no score: no campaign on a broken baseline
    print(report.render(), file=sys.stderr, flush=True)
    return noise


async def stop_campaign(bus: Bus, campaign_id: str, reason: str, *, producer: str = "arx-campaign",
                        trials: int = 0) -> bool:
    """Stop a campaign by hand, or as the evaluator (with the trials counted); the reason goes in the log.
    A campaign stops once (its stop has one subject): False when it had already stopped."""
    return await bus.publish(CampaignStopped(campaign_id=campaign_id, producer=producer, reason=reason, trials=trials))


def default_campaign_id(task: str) -> str:
    return f"{task}-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"


async def running_campaign(bus: Bus, task: str | None) -> str | None:
    lineage = Lineage()
    await catch_up(bus, lineage)
    return views.running_campaign(lineage, task)


async def _main(args) -> None:
    async with await Bus.connect(role="admin", name="arx-campaign") as bus:
        if args.action == "running":
            print(await running_campaign(bus, args.task) or "")
        elif args.action == "start":
            task = load_task(args.task)
            if args.short:
                task.spec = task.spec.shortened()
            if args.train_s:
                task.spec = msgspec.structs.replace(
                    task.spec, budgets=msgspec.structs.replace(task.spec.budgets, train_s=args.train_s))
            campaign_id = args.campaign or default_campaign_id(task.name)
            # Refused before any noise run.
            rules = rules_from(args.plateau, args.failure_storm, args.deadline)
            budgets = budgets_from(args.budget_usd, args.budget_device_hours)
            noise = args.noise
            if args.measure_noise:
                noise = await measured_noise(task, args.measure_noise, args.devices)
            await start_campaign(bus, task, campaign_id=campaign_id, trials=args.trials, arm=args.arm, noise=noise,
                                 stop_rules=rules, budgets=budgets)
            print(campaign_id)
        else:
            check_token("campaign", args.campaign)
            await stop_campaign(bus, args.campaign, args.reason)
            print(f"stopped {args.campaign}")


def cli_arguments(parser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, parser_class=type(parser))
    start = actions.add_parser("start", help="publish CampaignStarted and queue the baseline trial")
    start.add_argument("--task", default="digits-speedrun")
    start.add_argument("--trials", type=positive_int, default=30)
    start.add_argument("--campaign", help="campaign id (default: <task>-<timestamp>)")
    start.add_argument("--arm", default="lineage", choices=ARMS)
    noise = start.add_mutually_exclusive_group()
    noise.add_argument("--noise", type=float, help="relative noise floor (default: the task's)")
    noise.add_argument("--measure-noise", type=at_least_two, metavar="RUNS",
                       help="measure the noise floor first, over this many runs of the starting recipe")
    start.add_argument("--devices", default="cpu", help=f"with --measure-noise: {DEVICES_HELP}")
    start.add_argument("--plateau", type=int, metavar="K", help="stop after K counted trials in a row without a keep")
    start.add_argument("--failure-storm", metavar="F/K",
                       help="stop when more than F%% of the last K trials fail on harness faults or one failure label")
    start.add_argument("--short", action="store_true",
                       help="run the recipe shrunk through its own settings (the task's [short] table): a smoke test")
    start.add_argument("--train-s", type=positive_float, metavar="S",
                       help="the executor's wall clock for each trial's run (default: the task's)")
    start.add_argument("--deadline", metavar="DURATION", help="stop this long after the start: 90s, 45m, 12h, 2d")
    start.add_argument("--budget-usd", type=float, metavar="D",
                       help="stop when LLM plus device dollars (at ARX_LLM_PRICES, ARX_DEVICE_PRICES) would pass D")
    start.add_argument("--budget-device-hours", action="append", default=[], metavar="KIND=H",
                       help="stop when the device-hours of KIND (cpu: core-hours, cuda: GPU-hours) would pass H;"
                       " repeatable")
    running = actions.add_parser("running", help="print the id of the latest campaign still running")
    running.add_argument("--task", help="only campaigns of this task")
    stop = actions.add_parser("stop", help="publish CampaignStopped")
    stop.add_argument("--campaign", required=True)
    stop.add_argument("--reason", default="stopped by user")


def cli(args) -> int:
    asyncio.run(_main(args))
    return 0


def cli_task_arguments(parser) -> None:
    parser.add_argument("name", nargs="?", help="a task name (omit to list them)")
    parser.add_argument("--surfaces", action="store_true", help="print only the surface names, one a line")
    parser.add_argument("--roster", metavar="ARM", help="print the offline agents an arm runs: policy specialist surface")


def cli_task(args) -> int:
    if args.name is None:
        print("\n".join(task_names()))
        return 0
    spec = load_task(args.name).spec
    if args.surfaces:
        print("\n".join(surface.name for surface in spec.surfaces))
    elif args.roster:
        from agents.arms import roster

        print("\n".join(f"{m.policy} {m.specialist} {m.surface}" for m in roster(spec, args.roster)))
    else:
        print(msgspec.json.format(msgspec.json.encode(spec)).decode())
    return 0
