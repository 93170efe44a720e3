"""Projections: the lineage database folded from the event log, its views and its audits."""
