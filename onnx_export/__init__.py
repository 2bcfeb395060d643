"""ONNX export with a fixed-size KV cache, TensorRT builds and parity checks (issue 4)."""
