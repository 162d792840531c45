"""Flow++ normalizing flow (Ho et al. 2019) in the CoopFlow configuration (SPEC §1)."""
from .flow import FlowPlusPlus, FlowStep, data_init
from .mixture import INV_CDF_METHODS

__all__ = ["FlowPlusPlus", "FlowStep", "data_init", "INV_CDF_METHODS"]
