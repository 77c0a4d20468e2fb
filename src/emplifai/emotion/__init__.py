"""Emotion prediction: predictors (fastText, local LM generate/rank, OpenAI-compatible), scoring, reports.

The stage module `emplifai.emotion` wires these together; see its docstring for commands.
"""
