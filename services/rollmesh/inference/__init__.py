"""The inference service: token-exact generation with logprobs, and weights that change while
serving. Backends (`backends/hf.py`, `backends/vllm.py`) implement `backend.Backend`."""
