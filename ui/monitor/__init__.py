"""The Monitor panel and reader-feedback controls (over imaging_assist.monitoring)."""
