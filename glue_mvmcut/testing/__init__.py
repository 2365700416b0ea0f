"""An offline MAST world: a synthetic MVM archive and a stand-in MAST server on 127.0.0.1.

Used by the test suite and by ``mvmcut demo``; see `glue_mvmcut.testing.synth` and
`glue_mvmcut.testing.server`.
"""
