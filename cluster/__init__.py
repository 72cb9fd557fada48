"""Running a study on a cluster: `cluster.slurm` writes and submits SLURM scripts generated from
run.py's config (`python run.py submit ...` or `python -m cluster.slurm ...`; see docs/cluster.md).

Nothing is imported here, so `python -m cluster.slurm` runs the module only once."""
