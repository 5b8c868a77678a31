"""The `python -m pipeline` commands (demo, run, status, generate).

They sit above the stages: they run `data_prep`, `train` and `eval` as subprocesses and
read what those write. Nothing in the core library or in a stage imports from here.
"""
