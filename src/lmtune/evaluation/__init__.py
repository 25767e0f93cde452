"""Reports, plots and model cards built from a run's results."""
