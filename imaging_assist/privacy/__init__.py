"""Privacy (no Qt): PS3.15 de-identification, burned-in text removal, the hash-chained audit trail."""
