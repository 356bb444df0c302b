"""AI workspace: the models panel, model/series matching for the panel, the model card dialog and
the demo auto-run."""
