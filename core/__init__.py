"""What every layer of the tool shares: the one-line error type (`errors.py`) and
the run directory on disk (`rundir.py`: layout, atomic writes, hashes, checkpoints,
done records). Imports torch only where a checkpoint is read."""

from .errors import ConfigError, check_choice, check_int, check_number, first_line

__all__ = ["ConfigError", "check_choice", "check_int", "check_number", "first_line"]
