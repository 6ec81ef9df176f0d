"""`pgolf run`: a submission as isolated, timed train and eval phases that the harness measures itself."""
