"""Human review: the tasks opened for items people decide (`tasks`)."""
