"""Learning from the readers (no Qt): prediction log, reader feedback, drift monitor, model versions."""
