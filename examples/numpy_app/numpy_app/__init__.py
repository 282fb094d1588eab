"""A Flower app that runs DStar with a numpy-only ClientApp (linear regression)."""
