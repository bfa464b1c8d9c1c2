"""Two-way sync between PostgreSQL databases: one reader per node, one applier
per ordered pair of nodes, replication origins against echo, conflicts
detected on apply and resolved by per-table policy (see README, "Two-way sync")."""
