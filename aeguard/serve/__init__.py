"""The scoring daemon: onnxruntime + numpy + Starlette/uvicorn. Never imports torch."""
