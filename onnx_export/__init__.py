"""ONNX export of the decoder with a fixed-size KV cache updated in place (issue 4).

Graphs are built straight from a model folder's safetensors with the `onnx` package
(no torch): `graph.py` is the network, `build.py` reads, caches and quantizes, and
`parity.py` holds an export to PyTorch. The runtime that drives them is
`musebridge.engine.decode.ort_runtime.OrtRuntime`; pick backends with
`musebridge.engine.decode.backends.open_runtime`.
"""

from .build import (BUILDER_VERSION, DTYPES, GraphFileError, build_models, cache_root, export, graph_paths, model_hash,
                    read_weights)
from .graph import KINDS, GraphConfig, build_graph

__all__ = ["BUILDER_VERSION", "DTYPES", "KINDS", "GraphConfig", "GraphFileError", "build_graph", "build_models",
           "cache_root", "export", "graph_paths", "model_hash", "read_weights"]
