"""Code that runs inside a submission's processes (kept free of harness imports)."""
