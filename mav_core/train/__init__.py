"""Training recipes of the MAV-Tiny family, one module per stage, sharing `loop.train_loop`."""
