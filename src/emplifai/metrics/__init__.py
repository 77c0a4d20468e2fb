"""Shared measures: agreement statistics as thin wrappers over scipy / scikit-learn / krippendorff (no hand-written
formulas), the project's one bootstrap CI (bootstrap.py), and BERTScore (bertscore.py, the one bert_score user)."""
