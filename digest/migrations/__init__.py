"""Alembic migrations of the store: env.py, the revisions in versions/, and the baseline.

digest.db runs them (`digest db upgrade`); see the README's "Schema changes".
"""
