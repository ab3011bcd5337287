"""The compiler passes, one a file; each docstring says what the pass reads and writes."""
