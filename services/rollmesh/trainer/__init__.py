"""DeepSpeed trainer: GRPO-family RL and SFT on rollouts from JetStream, weights pushed to inference."""
