"""Reading, validating and splitting the raw EmplifAI-layout data."""
