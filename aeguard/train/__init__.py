"""The torch side: models, the training loop, ONNX export and the fit pipeline. Never imported by scoring."""
