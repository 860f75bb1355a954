"""Compression methods behind one entry point, ``compress(model, config, scope)``."""

from .api import CompressionReport, codecs, compress, count_params
from .binary import BinaryConfig
from .kmeans import KMeansConfig
from .kmeans_flex import FlexKMeansConfig
from .prune import PruneConfig, set_sparsity
from .scopes import ROLES, select

__all__ = ["compress", "codecs", "count_params", "CompressionReport", "KMeansConfig", "FlexKMeansConfig", "BinaryConfig",
           "PruneConfig", "set_sparsity", "select", "ROLES", "to_inference"]
