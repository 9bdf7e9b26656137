"""The database stage: results_db.py is the SQLite results database the sweep driver writes and the analysis
reads (`load_trials` for pandas); sqlite_readonly.py opens it read-only wherever it lies."""
