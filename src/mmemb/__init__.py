"""mmemb: multimodal embeddings that reason only when reasoning helps (MMEmb-R1)."""

from .config import EmbedderConfig
from .embedder import Embedder
from .types import Embeddings, InputError, Sample

__all__ = ["Embedder", "EmbedderConfig", "Embeddings", "InputError", "Sample"]
__version__ = "0.1.0"
