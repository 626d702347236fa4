"""Influence: the pool-by-validation score matrix (scores), its streamed readers for pools larger than memory
(streamed) and its pictures (plots).

Import from the module, not this package: a step's identity then covers only the code it runs.
"""
