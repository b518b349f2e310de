"""Tools beside the suite: programs a user runs by hand that no stage imports (the data
generator `python -m pipeline.synth`). They may use PIL and processes freely; the layer
contracts (pyproject.toml) keep them out of the pure domain and every layer below them."""
