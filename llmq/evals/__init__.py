"""Shadow runs and the evaluation log: which variant a job is shadowed with (spec.py), the
offline scores of one output against its source (scores.py), and the per-variant report with
paired differences to the primary (report.py). Pure logic: the SQL is in llmq/store/evals.py,
the worker's side in llmq/execution/shadow.py."""
