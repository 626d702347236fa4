"""What a run reports: a run's markdown report (run), markdown helpers (markdown), the seed experiment's table
(experiment) and the pre-registered evidence comparisons (evidence).

Import from the module, not this package: a step's identity then covers only the code it runs.
"""
