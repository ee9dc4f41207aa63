"""The needle-tile benchmark: the task (`task.py`), the runner (`run.py`), the report and the diagnosis."""
