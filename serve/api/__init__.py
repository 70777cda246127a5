"""The HTTP API beside tritonserver: OpenAI `/v1/embeddings`, TEI `/embed`, Hugging Face fill-mask, health.

`serve.api.process.running_api(...)` runs it as its own process (uvicorn) next to tritonserver and
forwards every text to Triton over gRPC aio, so Triton's dynamic batcher still merges the requests of
all clients. `serve.api.app.create_app(...)` builds the ASGI app. Nothing heavy is imported here.
"""
