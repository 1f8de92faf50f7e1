"""The replay corpus: one small tenant revision per pattern that published chains use.

Each file is a revision on top of the demo chain's head. ``tests/test_replay_corpus.py`` runs
every one on tenants at mixed starting revisions three ways (replay, ``--no-replay``, plain
Alembic) and fails on any difference. Module-level settings a pattern may set:

- ``corpus_replayed``: True if replay must be used for it, False if it must not (default True);
- ``corpus_fails``: every tenant's migration fails (and must be rolled back the same way);
- ``corpus_plain_alembic``: False if plain ``alembic -n tenant`` cannot run it;
- ``corpus_setup``: SQL run in the named tenants (``head_b``, ``old``, ...) before migrating,
  to make tenants differ.

To add a pattern, add a file ``cNN_what_it_shows.py`` whose ``revision`` is its file name.
"""
