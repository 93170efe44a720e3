"""Executors: materialize a trial's tree from the log, run it sandboxed under limits, report what they measured."""
