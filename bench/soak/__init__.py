"""Soak and fault-injection harness: run everything, break things, prove nothing is lost.

    python -m bench.soak [--duration 600] [--clients 32] [--envs 20 --modules 15]
                         [--seed N] [--out DIR] [--no-docs]

CI runs the short version: ``python -m bench.soak --duration 60 --envs 4 --modules 3``.

* :mod:`bench.soak.cluster` builds and starts the installation;
* :mod:`bench.soak.load` is the mixed load of client threads;
* :mod:`bench.soak.faults` kills processes and plants stale ref locks;
* :mod:`bench.soak.hostile` feeds hostile inputs;
* :mod:`bench.soak.checks` checks the history and the live directories;
* :mod:`bench.soak.report` prints and records the summary (docs/soak.md).

Exit status 0 when every check passed, 1 otherwise.
"""
