"""The typed cell (CellConfig) and what it is checked against: tasks, leaf validation, model sizes, evaluation settings."""
