"""Serving: an OpenAI-compatible embeddings server (app.py) with dynamic batching in lanes (batcher.py) and
request checks (inputs.py). Needs the `serve` extra (fastapi, uvicorn, prometheus-client)."""
