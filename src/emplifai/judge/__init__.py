"""LLM-as-a-judge: rubric + prompts (rubric), items, parsing, hf_local scorer, backends (engine), reports."""
