"""The Query/Retrieve window and "Send to PACS…" (over imaging_assist.pacs)."""
