"""Orchestrator: schedules rollouts across environment and inference replicas, scores them, publishes them."""
