"""Training: the loop, optimizers and schedules, checkpoints, distributed helpers."""
