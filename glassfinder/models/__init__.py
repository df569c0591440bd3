"""Model definitions: one frozen config dataclass and one `build_*(cfg) -> nn.Module` per model.

Each model lives in its own module (detector, aligner, gate, embedder); import from there.
"""
from glassfinder.models.aligner import AlignerConfig, build_aligner
from glassfinder.models.detector import DetectorConfig, build_detector
from glassfinder.models.embedder import EmbedderConfig, build_embedder
from glassfinder.models.gate import GateConfig, build_gate

__all__ = ["AlignerConfig", "DetectorConfig", "build_aligner", "build_detector",
           "EmbedderConfig", "build_embedder", "GateConfig", "build_gate"]
