from .classifier import Classifier
from .networks import ARCHS, build_network

__all__ = ["ARCHS", "Classifier", "build_network"]
