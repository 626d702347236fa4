"""Pruned models and what pruning costs a pool row: magnitude and Wanda pruning (prune) and PASER's degradation scores
(degradation).

Import from the module, not this package: a step's identity then covers only the code it runs.
"""
