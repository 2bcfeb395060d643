"""Decoding: the runtime interface and its runtimes (PyTorch, ONNX Runtime, TensorRT), sampling,
one decode step, following the player, generation and the benchmarks."""
