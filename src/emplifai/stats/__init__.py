"""Agreement statistics as thin wrappers over scipy / scikit-learn / krippendorff (no hand-written formulas)."""
