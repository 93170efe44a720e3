"""Specialist agents: the base loop that reads the lineage and proposes trials, and its policies."""
