"""`run.py study`: a matrix of run.py runs over one membership plan, with one combined report."""

from .runner import StudyError, load_study, study_main

__all__ = ["StudyError", "load_study", "study_main"]
