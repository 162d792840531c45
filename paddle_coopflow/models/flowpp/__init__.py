"""Flow++ normalizing flow (Ho et al. 2019) in the CoopFlow configuration."""
from .flow import FlowPlusPlus, FlowScale, data_init
from .mixture import INV_CDF_METHODS

__all__ = ["FlowPlusPlus", "FlowScale", "data_init", "INV_CDF_METHODS"]
