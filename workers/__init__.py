"""GPU workers: consume queued jobs of a model pool, run them on a backend, meter and report."""
