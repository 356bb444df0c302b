"""Validation of a model at the site: out-of-distribution scores (:mod:`.ood`)."""
