"""The `arx` command: one subcommand per role or tool; each lives in the package that owns it."""

from __future__ import annotations

import argparse
import importlib
import pathlib
import sys

from agents.registry import ARMS, POLICIES

# subcommand -> (module, function, help). Modules are imported only when their command runs.
COMMANDS = {
    "server": ("bus.cli", "serve", "start the embedded nats-server if none answers at NATS_URL, or a node of a cluster"),
    "campaign": ("evaluators.campaign", "cli", "start or stop a campaign"),
    "task": ("evaluators.campaign", "cli_task", "list the tasks, or show one task's spec"),
    "noise": ("evaluators.noise", "cli", "measure a task's score noise: repeated runs of its starting recipe"),
    "watch": ("projections.watch", "cli", "follow a campaign with a progress bar until it stops"),
    "executor": ("executors.worker", "cli", "run trials from the shared executor queue"),
    "evaluator": ("evaluators.worker", "cli", "score finished trials and label their outcomes"),
    "projector": ("projections.projector", "cli_follow", "fold the event log into lineage.db, continuously"),
    "replay": ("projections.projector", "cli_replay", "rebuild lineage.db from the log (or a file) into a fresh file"),
    "agent": ("agents.cli", "cli", "run one specialist agent"),
    "status": ("projections.status", "cli", "show a campaign: labels, incumbent, improvement, last trials"),
    "bench": ("agents.bench", "cli", "benchmarks: `arx bench research` runs campaigns per control arm and seed"),
    "export": ("projections.export", "cli", "write a campaign's events to a file, one JSON event a line"),
    "import": ("bus.eventfile", "cli_import", "publish an event file's events, skipping those already stored"),
    "import-tsv": ("projections.trajectories", "cli",
                   "turn a trajectory (a seed-release or autoresearch results.tsv, an AIDE journal.json) into a campaign's events"),
    "audit": ("projections.audit", "cli", "audit campaigns from the lineage: labels, keep chain, repairs, domains"),
    "show": ("agents.show", "cli_show", "show one trial: hypothesis, label, score, gates, metrics, diffs, log tail"),
    "recipe": ("agents.show", "cli_recipe", "write one trial's whole tree into an empty folder, ready to run"),
    "history": ("executors.history", "cli", "the campaign's git repo as its history: outcomes as notes, keeps tagged"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """Bad arguments: one line on stderr and exit status 2."""
        sys.stderr.write(f"arx: {message}\n")
        sys.exit(2)


MEASURE_DEVICES_HELP = "the devices to run the starting recipe on: cpu (default), auto, or GPUs like cuda:0,cuda:1"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="arx", description="Auto research as a closed empirical loop over NATS JetStream.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    helps = {name: spec[2] for name, spec in COMMANDS.items()}

    server = sub.add_parser("server", help=helps["server"])
    server.add_argument("--listen", metavar="HOST:PORT",
                        help="where clients reach this node (default 127.0.0.1:$ARX_NATS_PORT; 0.0.0.0:4222 for all hosts)")
    server.add_argument("--node", metavar="NAME", help="this node's name in its cluster (makes it a cluster node)")
    server.add_argument("--cluster", default="arx", help="the cluster's name (default: arx)")
    server.add_argument("--cluster-listen", metavar="HOST:PORT", help="where the other nodes' routes reach this one")
    server.add_argument("--routes", metavar="HOST:PORT,...", default="",
                        help="every node's --cluster-listen address (this node's own may be among them)")
    server.add_argument("--tls", action="store_true",
                        help="speak TLS: a private CA and this node's certificate under $ARX_HOME/tls (made once)")
    server.add_argument("--tls-host", action="append", default=[], metavar="NAME",
                        help="with --tls: another name or address clients reach this node by (repeatable)")
    server.add_argument("--tls-cert", type=pathlib.Path, help="a certificate of your own for this node (with --tls-key)")
    server.add_argument("--tls-key", type=pathlib.Path, help="the key of --tls-cert")

    campaign = sub.add_parser("campaign", help=helps["campaign"])
    campaign_sub = campaign.add_subparsers(dest="action", required=True, parser_class=_Parser)
    start = campaign_sub.add_parser("start", help="publish CampaignStarted and queue the baseline trial")
    start.add_argument("--task", default="digits-speedrun")
    start.add_argument("--trials", type=_positive_int, default=30)
    start.add_argument("--campaign", help="campaign id (default: <task>-<timestamp>)")
    start.add_argument("--arm", default="lineage", choices=ARMS)
    noise = start.add_mutually_exclusive_group()
    noise.add_argument("--noise", type=float, help="relative noise floor (default: the task's)")
    noise.add_argument("--measure-noise", type=_at_least_two, metavar="RUNS",
                       help="measure the noise floor first, over this many runs of the starting recipe")
    start.add_argument("--devices", default="cpu", help=f"with --measure-noise: {MEASURE_DEVICES_HELP}")
    start.add_argument("--plateau", type=int, metavar="K", help="stop after K counted trials in a row without a keep")
    start.add_argument("--failure-storm", metavar="F/K",
                       help="stop when more than F%% of the last K trials fail on harness faults or one failure label")
    start.add_argument("--deadline", metavar="DURATION", help="stop this long after the start: 90s, 45m, 12h, 2d")
    running = campaign_sub.add_parser("running", help="print the id of the latest campaign still running")
    running.add_argument("--task", help="only campaigns of this task")
    stop = campaign_sub.add_parser("stop", help="publish CampaignStopped")
    stop.add_argument("--campaign", required=True)
    stop.add_argument("--reason", default="stopped by user")

    noise_cmd = sub.add_parser("noise", help=helps["noise"])
    noise_cmd.add_argument("--task", required=True)
    noise_cmd.add_argument("--runs", type=_at_least_two, default=5)
    noise_cmd.add_argument("--json", action="store_true", help="print the report as JSON")
    noise_cmd.add_argument("--devices", default="cpu", help=MEASURE_DEVICES_HELP)

    task = sub.add_parser("task", help=helps["task"])
    task.add_argument("name", nargs="?", help="a task name (omit to list them)")
    task.add_argument("--surfaces", action="store_true", help="print only the surface names, one a line")
    task.add_argument("--roster", metavar="ARM", help="print the offline agents an arm runs: policy specialist surface")

    watch = sub.add_parser("watch", help=helps["watch"])
    watch.add_argument("--campaign", help="campaign id (default: the latest)")

    executor = sub.add_parser("executor", help=helps["executor"])
    executor.add_argument("--name", help="executor name (default: executor-<host>-<pid>)")
    executor.add_argument(
        "--devices", default="cpu",
        help="cpu (default), auto (CUDA_VISIBLE_DEVICES or nvidia-smi), or GPUs like cuda:0,cuda:1: "
        "the executor takes only trials whose task's requirements these meet",
    )

    evaluator = sub.add_parser("evaluator", help=helps["evaluator"])
    evaluator.add_argument("--name", help="evaluator name (default: evaluator-<host>-<pid>)")

    projector = sub.add_parser("projector", help=helps["projector"])
    projector.add_argument("--db", help="lineage database (default: $ARX_HOME/lineage.db)")

    replay = sub.add_parser("replay", help=helps["replay"])
    replay.add_argument("--db", help="lineage database to replace (default: $ARX_HOME/lineage.db)")
    replay.add_argument("--from-file", metavar="FILE", help="rebuild from this event file instead of the stream")

    agent = sub.add_parser("agent", help=helps["agent"])
    agent.add_argument("--policy", default="tpe", metavar="NAME|module:Class",
                       help=f"a built-in policy ({', '.join(sorted(POLICIES))}; default: tpe), or module:Class, a "
                       "Specialist subclass in the current directory or on PYTHONPATH")
    agent.add_argument("--specialist", required=True, help="this agent's name, e.g. tpe-optimizer")
    agent.add_argument("--surface", required=True, help="the task surface it may edit ('*' for all)")
    agent.add_argument("--campaign", help="campaign to work on (default: the latest running one)")
    agent.add_argument("--max-in-flight", type=_positive_int, default=1)
    agent.add_argument("--seed", type=int, default=0)
    agent.add_argument("--model", help="llm: the model the OpenAI-compatible endpoint (OPENAI_BASE_URL) serves")
    agent.add_argument(
        "--no-lineage", action="store_true", help="llm: show only the incumbent's id and score (a control arm)"
    )

    bench = sub.add_parser("bench", help=helps["bench"])
    bench_sub = bench.add_subparsers(dest="bench", required=True, parser_class=_Parser)
    research = bench_sub.add_parser("research", help="campaigns per arm and seed, each on a cluster of its own")
    research.add_argument("--task", default="digits-speedrun")
    research.add_argument("--arms", default="lineage,no-lineage", help="comma-separated: lineage, no-lineage, ...")
    research.add_argument("--trials", type=_positive_int, default=40, help="trials per campaign")
    research.add_argument("--seeds", type=_positive_int, default=3, help="campaigns per arm (seeds 0..N-1)")
    research.add_argument("--executors", type=_positive_int, default=1, help="executor processes per run")
    research.add_argument("--json", action="store_true", help="print a JSON list, one object per run")
    research.add_argument("--run-timeout", type=float, help="seconds per run before it is stopped")
    research.add_argument("--benchmarks", help="the markdown file to write the table into (default: BENCHMARKS.md)")
    research.add_argument("--no-write", action="store_true", help="do not write the table into BENCHMARKS.md")
    research.add_argument("--keep", action="store_true", help="keep the runs' logs and stores")

    status = sub.add_parser("status", help=helps["status"])
    status.add_argument("--campaign")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument("--db", help="read this lineage database instead of the live log")

    export = sub.add_parser("export", help=helps["export"])
    export.add_argument("--campaign", help="campaign id (default: the latest)")
    export.add_argument("file", help="the event file to write")
    export.add_argument("--objects", action="store_true",
                        help="also write every object the events point at (bundle, logs, artifacts) into FILE.objects/")

    import_ = sub.add_parser("import", help=helps["import"])
    import_.add_argument("file", help="an event file written by `arx export` or `arx import-tsv --to-file`")

    import_tsv = sub.add_parser("import-tsv", help=helps["import-tsv"])
    import_tsv.add_argument("tsv", help="a seed-release or autoresearch results.tsv, or an AIDE journal.json")
    import_tsv.add_argument("--format", choices=["seed", "autoresearch", "aide"],
                            help="the file's format (default: told from the file itself)")
    import_tsv.add_argument("--campaign", required=True, help="the campaign id to import it as")
    import_tsv.add_argument("--to-file", help="write the events to this event file instead of publishing them")
    import_tsv.add_argument("--metric", help="the score column (default: the one the file's best.json or baseline row names)")
    import_tsv.add_argument("--direction", choices=["min", "max"],
                            help="whether a lower or a higher score is better (default: read from the kept trials)")
    import_tsv.add_argument("--task", help="the task the campaign names (default: the run's folder)")

    audit = sub.add_parser("audit", help=helps["audit"])
    audit.add_argument("--db", help="read this lineage database instead of the live log")
    audit.add_argument("--campaign", help="only this campaign (default: all)")
    audit.add_argument("--json", action="store_true", help="print one JSON object")
    audit.add_argument("--html", metavar="DIR", help="also write DIR/index.html with plots")

    show = sub.add_parser("show", help=helps["show"])
    recipe = sub.add_parser("recipe", help=helps["recipe"])
    for command in (show, recipe):
        command.add_argument("trial", nargs="?", help="a trial id (default: the campaign's incumbent)")
        command.add_argument("--campaign", help="campaign id (default: the latest)")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    recipe.add_argument("--out", required=True, help="the folder to write the tree into (new or empty)")

    history = sub.add_parser("history", help=helps["history"])
    history.add_argument("--campaign", help="campaign id (default: the latest)")
    return parser


def _positive_int(text: str, least: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} must be at least {least}")
    return value


def _at_least_two(text: str) -> int:
    """A count of runs to measure a spread over."""
    return _positive_int(text, least=2)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, function, _ = COMMANDS[args.command]
    handler = getattr(importlib.import_module(module_name), function)
    try:
        return handler(args) or 0
    except KeyboardInterrupt:
        return 130
    except (ValueError, RuntimeError, OSError) as exc:
        sys.stderr.write(f"arx {args.command}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
