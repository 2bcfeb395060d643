"""The model's sizes, without torch: `ModelConfig` (saved as JSON beside the weights, and what
the ONNX graphs are built to) and the named sizes `CONFIGS`."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class ModelConfig:
    """Every size of the model; saved as JSON beside the weights."""

    vocab_size: int
    n_layer: int = 4
    n_head: int = 8
    d_model: int = 256
    context: int = 4096
    window: int = 128  # local span, and the stride of the strided heads
    local_heads: int = 0  # 0: half the heads
    mlp_ratio: int = 4
    dropout: float = 0.0
    ticks_per_beat: int = 12  # size of the phase embedding
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(f"d_model {self.d_model} must split into {self.n_head} heads of even size")
        if self.context % self.window:
            raise ValueError(f"context {self.context} must be a multiple of window {self.window}")
        if not self.local_heads:
            self.local_heads = self.n_head // 2
        if not 0 < self.local_heads < self.n_head:
            raise ValueError(f"local_heads must be in 1..{self.n_head - 1}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def strided_rows(self) -> int:
        """Cache rows a strided head reads per query."""
        return self.context // self.window

    def to_dict(self) -> dict:
        return asdict(self)


CONFIGS: dict[str, dict] = {
    # trains in minutes on a laptop CPU: for tests and smoke runs
    "tiny": dict(n_layer=2, n_head=4, d_model=64, window=32, context=512),
    # the shipped default: ~90 minutes on 2 CPU cores, a few MB
    "small": dict(n_layer=4, n_head=8, d_model=256, window=128, context=4096),
    # for a GPU
    "base": dict(n_layer=8, n_head=8, d_model=512, window=128, context=4096),
}
