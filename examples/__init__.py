"""Networks of your own, in the `model.net` contract (docs/models.md, "Your own network"), and an
attack of your own (my_attack.py, docs/attacks.md).

run.py runs from the repository root, so `examples.my_snn.MySNN` imports there; a
package of your own works the same way once it is importable (installed, or on
PYTHONPATH).
"""
