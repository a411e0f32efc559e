"""MLflow: runs, the store, sync and relocation."""
