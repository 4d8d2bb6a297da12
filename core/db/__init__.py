"""Storage: the database engine and its migrations (engine), the tables (models), the group-commit writer every
engine write goes through (groupcommit), and statements built once per dialect (prepared).

Imports only the foundation modules of core (settings, clock, histogram, ...), never a domain package.
"""
