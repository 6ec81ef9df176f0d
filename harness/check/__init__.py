"""`pgolf check`: judge a records folder from the evidence it ships (files, JSON, logs, code)."""
