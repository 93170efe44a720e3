"""The `arx` command: one subcommand per role or tool; each lives in the package that owns it."""

from __future__ import annotations

import argparse
import importlib
import sys

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
    # projections.audit's handler, which evaluators.holdout wraps for --holdout (it runs task code).
    "audit": ("evaluators.holdout", "cli_audit",
              "audit campaigns from the lineage: labels, keep chain, repairs, domains; --holdout: keeps on new data"),
    "show": ("agents.show", "cli_show", "show one trial: hypothesis, label, score, gates, metrics, diffs, log tail"),
    "recipe": ("agents.show", "cli_recipe", "write one trial's whole tree into an empty folder, ready to run"),
    "history": ("executors.history", "cli", "the campaign's git repo as its history: outcomes as notes, keeps tagged"),
    "smoke-data": ("evaluators.smoke_data", "cli",
                   "write stand-in data for the official GPU tasks in their own formats (proves the plumbing only)"),
    "ui": ("projections.ui", "cli", "serve lineage.db read-only in the browser (Datasette) with the campaign report"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """Bad arguments: one line on stderr and exit status 2."""
        sys.stderr.write(f"arx: {message}\n")
        sys.exit(2)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command with its help; only `command`'s module is imported, for its arguments.

    A command's arguments live beside its code: `module.<function>_arguments(parser)`.
    """
    parser = _Parser(prog="arx", description="Auto research as a closed empirical loop over NATS JetStream.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (module_name, function, help_) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_)
        if name == command:
            arguments = getattr(importlib.import_module(module_name), f"{function}_arguments")
            arguments(command_parser)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The subcommand argv names: its first word that is not an option."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command_of(argv)).parse_args(argv)
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
