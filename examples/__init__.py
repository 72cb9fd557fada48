"""Networks of your own, in the `model.net` contract (docs/models.md, "Your own network").

run.py runs from the repository root, so `examples.my_snn.MySNN` imports there; a
package of your own works the same way once it is importable (installed, or on
PYTHONPATH).
"""
