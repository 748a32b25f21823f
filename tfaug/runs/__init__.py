"""Algorithm 1 as resumable stages in a run directory, and the generators runs share."""
