"""Evaluators own the score, the legality gates and the label of every trial; tasks live in tasks/."""
