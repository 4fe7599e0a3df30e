"""Neural-network layers and networks."""
from .gyroplane import GyroplaneConv3d

__all__ = ["GyroplaneConv3d"]
