"""Admission: the API-side path of a submission, as plain Python (no web framework).

`pipeline.py` reads in order: template and version -> chain and short-input route -> cost
estimate against the budget -> webhook -> size limits -> redaction at ingest -> write the rows
-> publish. The HTTP layer (llmq/api) only parses requests into a `Submission` and turns an
`AdmissionError` into its error body; the store and the broker are injected, so every decision
is testable in memory (tests/unit/test_admission.py).
"""
