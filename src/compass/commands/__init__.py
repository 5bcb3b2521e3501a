"""The commands layer: user-facing commands that sit ABOVE the runner and the ledger.

The ledger (compass.ledger) is a library below the runner: it records runs and answers queries, and
imports neither the runner nor the stages. What needs both lives here:
    runs.py         `compass runs ...` (list, show, note, search, leaderboard, lineage, diff, reproduce,
                    report, check): argument parsing and printing over compass.ledger
    reproduce.py    `compass runs reproduce`: re-runs a recorded stage through the runner
    demo_tables.py  the demo's closing leaderboard of its own runs

Layer order (tests/unit/test_layers.py enforces it): base modules < domain libraries (ledger among them)
< stages < runner/pipeline < commands < cli/demo. A module here may import anything below; nothing below
imports from here.
"""
