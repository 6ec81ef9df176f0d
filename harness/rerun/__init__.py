"""`pgolf rerun`: reproduce a folder's claimed seeds and judge the claims with statistics."""
