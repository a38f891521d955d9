"""Operating a coordinator: checkpoints, metrics, model export.

Checkpoints are one concern in three modules by job: `checkpoint_file` (the
on-disk format and directory), `checkpoint_content` (what a checkpoint holds:
capture and restore) and `checkpoint_store` (when the runtime writes them,
and the rule that a version is served only once durable).
"""
