"""Many runs at once: the grid, the λ search, and the report that compares them."""
