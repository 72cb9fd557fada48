from .classifier import Classifier
from .networks import ARCHS, build_network
from .user_net import net_name

__all__ = ["ARCHS", "Classifier", "build_network", "net_name"]
