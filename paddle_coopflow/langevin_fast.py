"""Transitional stub, removed with the restructuring: the static Langevin step is now chosen per EBM by
`paddle_coopflow.accel.make_langevin_step(ebm, cfg.Langevin.engine)` and passed to
`langevin.langevin_flow(..., step=...)`. Nothing here has any effect."""


def mode_for_engine(engine: str) -> str:
    """Kept so callers not yet moved to accel.make_langevin_step still import; returns its argument."""
    return engine


def set_mode(mode: str) -> None:
    """No effect (there is no process-wide Langevin mode any more)."""
    return None
