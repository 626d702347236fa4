"""Examples and the pool: the Example type and tokenization (examples), preparing a recipe's pool and targets
(prepare), offline packages (offline), and the registered pool sources (sources/).

Import from the module, not this package: a step's identity then covers only the code it runs.
"""
