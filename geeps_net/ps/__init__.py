"""The GeePS parameter server: tables, planner, device memory, client, background threads, shards.

Imports nothing from the engine (net, layers, graph, solver, worker); worker.py binds the two.
"""
