"""Rubric service: reward functions, LLM judges, group advantages, live scoring of production traces."""
