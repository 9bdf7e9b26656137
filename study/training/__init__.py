"""The trainer stage: one trial from its configuration to its TrialRecord.

trainer.py runs the trial (`run_trial`), evaluate.py and metrics.py score it on the full catalogue,
checkpoint.py keeps its training state between epochs, export.py writes and reads the kept model.
"""
