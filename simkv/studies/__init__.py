"""Code that runs many simulations: sweeps and their executors, capacity search, reproduce, step-time tables."""
