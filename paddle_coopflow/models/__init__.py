"""Networks: Flow++ (normalizing flow), EBMs (energy-based models), 2-D toy flow."""
from .flowpp import FlowPlusPlus
